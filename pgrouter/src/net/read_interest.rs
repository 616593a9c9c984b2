//! A plain socket registered with the event loop for readability only.
//!
//! Tokio's `TcpStream` registers every socket for reading *and* writing,
//! edge-triggered. A proxy's writes are small and nearly always go straight
//! into the socket, so the write interest buys nothing, and it costs: epoll
//! then reports a socket whenever it is woken for anything while writable,
//! including a read notification whose bytes the router has already taken
//! (a message that arrived in two segments read at once, say). Each such
//! report is an `epoll_wait` that returns early with nothing to do, and the
//! event loop's work for an event that wakes no one. `strace` of TPC-B
//! (10 clients, one worker) counted a quarter of all reported events as
//! such write-only ones and ~38 % more `epoll_wait`s than PgBouncer, which
//! asks for writability only while a write waits.
//!
//! This type does the same: the socket is registered for reading; a write
//! is tried at once; only when the socket refuses bytes (its send buffer is
//! full: a large result to a slow client) is a duplicate of the descriptor
//! registered for writability, and kept for the connection's life (once a
//! socket has been full it is likely to be again). Reads clear the
//! readiness after a short read, as tokio's own streams do, so a message
//! costs exactly one `recv`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// A connected, non-blocking stream socket (`std::net::TcpStream` or
/// `std::os::unix::net::UnixStream`) read and written through the current
/// runtime's event loop, registered for readability only.
pub struct ReadInterest<S: OwnsSocket> {
    io: AsyncFd<S>,
    /// A duplicate of the descriptor registered for writability, made the
    /// first time the socket refused bytes.
    writer: Option<AsyncFd<OwnedFd>>,
}

/// A value that owns one open socket descriptor for its whole life and
/// never swaps it for another: what `AsyncFd` needs of what it registers.
pub trait OwnsSocket: AsRawFd {}
impl OwnsSocket for std::net::TcpStream {}
impl OwnsSocket for std::os::unix::net::UnixStream {}
impl OwnsSocket for OwnedFd {}

/// Registers `io` with the current runtime for `interest` only.
fn register<T: OwnsSocket>(io: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    // SAFETY: `OwnsSocket` values own their open descriptor until dropped
    // (or taken back with `into_inner`) and never change it.
    unsafe { AsyncFd::register_with_interest(io, interest) }.map_err(|e| e.into_parts().1)
}

impl<S: OwnsSocket> ReadInterest<S> {
    /// Registers `socket` (already non-blocking) with the current runtime.
    pub fn new(socket: S) -> io::Result<Self> {
        Ok(ReadInterest {
            io: register(socket, Interest::READABLE)?,
            writer: None,
        })
    }

    pub fn get_ref(&self) -> &S {
        self.io.get_ref()
    }

    /// The socket, taken off the event loop (to hand it to a TLS layer).
    pub fn into_inner(self) -> S {
        self.io.into_inner()
    }

    /// A read without waiting: `WouldBlock` when nothing is there. No
    /// system call unless the event loop saw the socket become readable
    /// since it was last found empty (as tokio's own `try_read`).
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.try_io(Interest::READABLE, |socket| {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
            unsafe { recv(socket.as_raw_fd(), buf.as_mut_ptr(), buf.len()) }
        })
    }

    fn fd(&self) -> i32 {
        self.io.as_raw_fd()
    }

    /// Waits until the socket takes bytes again, then runs `write` until it
    /// does not refuse them.
    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        write: impl Fn(i32) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        if self.writer.is_none() {
            match write(self.fd()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // SAFETY: the descriptor stays open while `self.io`
                    // lives, which covers this call.
                    let dup = unsafe { BorrowedFd::borrow_raw(self.fd()) }.try_clone_to_owned()?;
                    self.writer = Some(register(dup, Interest::WRITABLE)?);
                }
                done => return Poll::Ready(done),
            }
        }
        let fd = self.fd();
        let Some(writer) = self.writer.as_ref() else {
            unreachable!("registered above");
        };
        loop {
            let mut guard = ready!(writer.poll_write_ready(cx))?;
            match write(fd) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                done => return Poll::Ready(done),
            }
        }
    }
}

/// `recv(2)` into `len` bytes at `ptr`, retried when interrupted.
///
/// The three socket calls here are made with `syscall(2)`, not libc's
/// `recv`/`send`/`sendmsg`: those are thread-cancellation points, and in a
/// multi-threaded process glibc switches the thread to asynchronous
/// cancellation and back around each of them (`__pthread_enable_asynccancel`
/// and `__pthread_disable_asynccancel`, ~130 instructions per `-S`
/// transaction, ~5 % of what the relay itself runs). pgrouter never cancels
/// threads, so the switch buys nothing.
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes.
unsafe fn recv(fd: i32, ptr: *mut u8, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: the caller's promise.
        let n = unsafe {
            libc::syscall(
                libc::SYS_recvfrom,
                libc::c_long::from(fd),
                ptr,
                len,
                0 as libc::c_long,
                std::ptr::null_mut::<libc::sockaddr>(),
                std::ptr::null_mut::<libc::socklen_t>(),
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `send(2)` of `buf` (no SIGPIPE for a closed peer: EPIPE instead).
fn send(fd: i32, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
        let n = unsafe {
            libc::syscall(
                libc::SYS_sendto,
                libc::c_long::from(fd),
                buf.as_ptr(),
                buf.len(),
                libc::c_long::from(libc::MSG_NOSIGNAL),
                std::ptr::null::<libc::sockaddr>(),
                0 as libc::c_long,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `sendmsg(2)` of several buffers at once (no SIGPIPE).
fn send_vectored(fd: i32, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: an all-zero msghdr is valid (no address, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // `IoSlice` is ABI-compatible with `iovec` on Unix (std guarantees it).
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len().min(1024) as _;
    loop {
        // SAFETY: `msg` points at `bufs`, valid for the call.
        let n = unsafe {
            libc::syscall(
                libc::SYS_sendmsg,
                libc::c_long::from(fd),
                &msg as *const libc::msghdr,
                libc::c_long::from(libc::MSG_NOSIGNAL),
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl<S: OwnsSocket> ReadInterest<S> {
    /// Waits until the socket is readable, then `recv`s into the `len`
    /// bytes at `dst`; the count read (0: the peer closed).
    ///
    /// # Safety
    /// `dst` must be valid for writes of `len` bytes, `len` > 0.
    unsafe fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        dst: *mut u8,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.io.poll_read_ready(cx))?;
            // SAFETY: the caller's promise.
            match unsafe { recv(self.fd(), dst, len) } {
                Ok(n) => {
                    if n > 0 && n < len {
                        // The socket had less than asked for: it is empty
                        // now, and the next bytes to arrive raise a new
                        // event. Spares the `recv` that would say so.
                        guard.clear_ready();
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Reads what the socket holds into `buf`'s spare room (64 more bytes
    /// are made when it has none, as tokio's `read_buf` does): the
    /// session's reads, without `ReadBuf`'s bookkeeping in between.
    pub fn poll_read_into(
        &self,
        cx: &mut Context<'_>,
        buf: &mut bytes::BytesMut,
    ) -> Poll<io::Result<usize>> {
        if buf.capacity() == buf.len() {
            buf.reserve(64);
        }
        let spare = buf.spare_capacity_mut();
        // SAFETY: `spare` is valid for writes of its length (not zero).
        let n = ready!(unsafe { self.poll_recv(cx, spare.as_mut_ptr().cast(), spare.len()) })?;
        // SAFETY: `recv` initialized the first `n` bytes of the spare room.
        unsafe { buf.set_len(buf.len() + n) };
        Poll::Ready(Ok(n))
    }
}

impl<S: OwnsSocket + Unpin> AsyncRead for ReadInterest<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: `recv` only writes into the unfilled part, and the bytes
        // it reports written are marked initialized below.
        let unfilled = unsafe { buf.unfilled_mut() };
        let len = unfilled.len();
        if len == 0 {
            return Poll::Ready(Ok(()));
        }
        // SAFETY: `unfilled` is valid for writes of `len` bytes.
        let n = ready!(unsafe { self.poll_recv(cx, unfilled.as_mut_ptr().cast(), len) })?;
        // SAFETY: `recv` initialized the first `n` bytes.
        unsafe { buf.assume_init(n) };
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: OwnsSocket + Unpin> AsyncWrite for ReadInterest<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_with(cx, |fd| send(fd, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, |fd| send_vectored(fd, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // SAFETY: plain syscall on a descriptor `self` keeps open.
        let rc = unsafe { libc::shutdown(self.fd(), libc::SHUT_WR) };
        if rc == 0 {
            return Poll::Ready(Ok(()));
        }
        let e = io::Error::last_os_error();
        // Already disconnected: nothing left to shut.
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            return Poll::Ready(Ok(()));
        }
        Poll::Ready(Err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (ReadInterest<std::net::TcpStream>, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ours, theirs) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let ours = ours.unwrap().into_std().unwrap();
        (ReadInterest::new(ours).unwrap(), theirs.unwrap().0)
    }

    /// Bytes go both ways, a short read leaves the next message readable
    /// (the cleared readiness comes back with new bytes), and EOF reads 0.
    #[tokio::test(flavor = "current_thread")]
    async fn reads_and_writes_like_a_tcp_stream() {
        let (mut ours, mut theirs) = pair().await;
        ours.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        for round in 0..3u8 {
            theirs.write_all(&[round; 3]).await.unwrap();
            let mut buf = bytes::BytesMut::with_capacity(64);
            let n = ours.read_buf(&mut buf).await.unwrap();
            assert_eq!((n, &buf[..]), (3, &[round; 3][..]));
        }
        drop(theirs);
        let mut buf = [0u8; 8];
        assert_eq!(ours.read(&mut buf).await.unwrap(), 0);
    }

    /// A write larger than the socket buffers waits for the peer to read
    /// (the writability registration) and then completes, whole.
    #[tokio::test(flavor = "current_thread")]
    async fn a_write_the_socket_refuses_waits_for_room() {
        let (mut ours, mut theirs) = pair().await;
        let big: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let expected = big.clone();
        let reader = async move {
            let mut got = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            while got.len() < expected.len() {
                let n = theirs.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                got.extend_from_slice(&chunk[..n]);
            }
            assert!(got == expected);
        };
        let writer = async move {
            ours.write_all(&big).await.unwrap();
            assert!(ours.writer.is_some(), "the socket was full at some point");
        };
        tokio::join!(reader, writer);
    }

    /// `try_read` says WouldBlock on an empty socket and reads what is there.
    #[tokio::test(flavor = "current_thread")]
    async fn try_read_does_not_wait() {
        let (ours, mut theirs) = pair().await;
        let mut probe = [0u8; 1];
        let e = ours.try_read(&mut probe).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        theirs.write_all(b"x").await.unwrap();
        theirs.flush().await.unwrap();
        crate::timer::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(ours.try_read(&mut probe).unwrap(), 1);
    }
}
