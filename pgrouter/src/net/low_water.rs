//! `SO_RCVLOWAT` on a server connection while a fan-out streams a large
//! result.
//!
//! PostgreSQL sends a large result 8 KiB at a time, and the router is woken
//! for nearly every send: per 2 M-row result over two shards, ~4,500 reads
//! and ~3,300 context switches, most of the router's CPU, on machines where
//! that CPU is taken from the shards and the client. With the mark raised,
//! the kernel wakes the router only once a leg has [`MARK`] bytes queued, so
//! every wake-up carries several of the server's sends.
//!
//! The mark is raised only after a leg has streamed [`STREAMING_AT`] bytes
//! of one statement (small answers never see it), and lowered to 1 byte
//! (Linux's default) for the tail of the result, when nothing has arrived
//! for a moment (the fan-out's timer; Linux wakes a reader whose lowered
//! mark is already met: `tcp_set_rcvlowat` calls `tcp_data_ready`), when
//! the fan-out ends, and at the latest when the connection goes back to the
//! pool. A Unix-domain socket's readiness ignores the mark; it is not set
//! there.

use std::os::fd::AsRawFd;

use super::ServerStream;

/// Bytes a leg streams in one statement before its mark is raised.
pub const STREAMING_AT: usize = 512 * 1024;
/// The raised mark: eight of PostgreSQL's 8 KiB sends.
pub const MARK: i32 = 64 * 1024;

/// Whether a server connection's mark is raised, and how much it streamed
/// since the mark last changed.
#[derive(Debug, Default)]
pub struct LowWater {
    raised: bool,
    streamed: usize,
}

impl LowWater {
    pub fn is_raised(&self) -> bool {
        self.raised
    }

    /// `bytes` more were read for a streaming fan-out: raises the mark once
    /// the leg streamed [`STREAMING_AT`]. A socket that refuses the option
    /// just stays woken for every send.
    pub fn streamed(&mut self, stream: &ServerStream, bytes: usize) {
        if self.raised {
            return;
        }
        self.streamed += bytes;
        if self.streamed >= STREAMING_AT {
            self.streamed = 0;
            self.raised = stream.set_receive_low_water(MARK).is_ok();
        }
    }

    /// Back to waking for every byte. An error leaves the connection in a
    /// state nobody else may use: the caller closes it.
    pub fn lower(&mut self, stream: &ServerStream) -> std::io::Result<()> {
        self.streamed = 0;
        if !self.raised {
            return Ok(());
        }
        stream.set_receive_low_water(1)?;
        self.raised = false;
        Ok(())
    }
}

/// `setsockopt(SO_RCVLOWAT)` on `socket`.
pub fn set(socket: &impl AsRawFd, bytes: i32) -> std::io::Result<()> {
    let value: libc::c_int = bytes;
    // SAFETY: `setsockopt` reads `size_of::<c_int>()` bytes from `value`,
    // a live local, and `socket` keeps its descriptor open for the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mark is raised after `STREAMING_AT` bytes and lowered again, on
    /// a real TCP socket (the kernel reports what was set).
    #[tokio::test(flavor = "current_thread")]
    async fn raises_after_streaming_and_lowers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, _server) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let stream = ServerStream::plain(client.unwrap()).unwrap();
        let read_mark = |s: &ServerStream| {
            let ServerStream::Plain(tcp) = s else {
                unreachable!()
            };
            let mut value: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: `getsockopt` writes at most `len` bytes to `value`.
            let rc = unsafe {
                libc::getsockopt(
                    tcp.get_ref().as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVLOWAT,
                    (&mut value as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            (rc == 0).then_some(value)
        };
        let mut lw = LowWater::default();
        lw.streamed(&stream, STREAMING_AT - 1);
        assert!(!lw.is_raised());
        lw.streamed(&stream, 1);
        assert!(lw.is_raised());
        assert_eq!(read_mark(&stream), Some(MARK));
        lw.lower(&stream).unwrap();
        assert!(!lw.is_raised());
        assert_eq!(read_mark(&stream), Some(1));
    }
}
