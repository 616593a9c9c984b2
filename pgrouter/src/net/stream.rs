//! The byte streams to clients and servers: plain TCP or TLS over it.
//!
//! Both implement `AsyncRead + AsyncWrite + Unpin`, so the session code reads
//! and writes them like the `TcpStream`s they replace. One difference is
//! hidden here: a TLS stream may accept bytes into its record buffer without
//! handing them to the socket (when the socket is full), and the session code
//! never flushes. `WriteThrough` makes a TLS write complete only once its
//! records are in the socket, as a TCP write does, so a `write_all` followed
//! by a read cannot leave the peer waiting for bytes still in our buffer.

use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::read_interest::ReadInterest;

/// A plain TCP socket as the session reads and writes it (registered for
/// readability only, see `read_interest.rs`).
pub type PlainTcp = ReadInterest<std::net::TcpStream>;
/// A Unix-domain socket to a server, likewise.
pub type PlainUnix = ReadInterest<std::os::unix::net::UnixStream>;

/// A client's connection: plain, or TLS after an SSLRequest.
pub enum ClientStream {
    Plain(PlainTcp),
    Tls(Box<WriteThrough<tokio_rustls::server::TlsStream<TcpStream>>>),
    /// Only while the TCP stream is being handed to the TLS handshake (and
    /// after a failed one): every read and write fails.
    Detached,
}

/// A server connection: plain, or TLS after the server accepted our
/// SSLRequest, or a Unix-domain socket (never TLS).
pub enum ServerStream {
    Plain(PlainTcp),
    Tls(Box<WriteThrough<tokio_rustls::client::TlsStream<TcpStream>>>),
    Unix(PlainUnix),
}

impl ClientStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }
}

impl ClientStream {
    /// A client's socket, registered with the current runtime.
    pub fn plain(socket: std::net::TcpStream) -> io::Result<Self> {
        Ok(ClientStream::Plain(ReadInterest::new(socket)?))
    }
}

/// A client's stream on its way to another event loop (see
/// `client/moving.rs`): a plain socket off every loop, or a TLS stream whose
/// socket is still registered with the loop it leaves.
pub enum MovingClient {
    Plain(std::net::TcpStream),
    Tls(Box<WriteThrough<tokio_rustls::server::TlsStream<TcpStream>>>),
}

impl ClientStream {
    /// Takes the stream off the current event loop (a TLS stream's socket
    /// is taken off in [`MovingClient::register`], since the TLS layer
    /// cannot give it up). None for a detached stream.
    pub fn start_moving(self) -> Option<MovingClient> {
        match self {
            ClientStream::Plain(plain) => Some(MovingClient::Plain(plain.into_inner())),
            ClientStream::Tls(tls) => Some(MovingClient::Tls(tls)),
            ClientStream::Detached => None,
        }
    }
}

impl MovingClient {
    /// Registers the stream with the current runtime. A TLS stream's
    /// socket is duplicated and the duplicate registered here; the TLS
    /// layer's own socket (registered with the loop left behind) is
    /// swapped for it and closed, which takes it off that loop. Both refer
    /// to one connection, so nothing in flight is lost.
    pub fn register(self) -> io::Result<ClientStream> {
        match self {
            MovingClient::Plain(socket) => ClientStream::plain(socket),
            MovingClient::Tls(mut tls) => {
                let (socket, _) = tls.get_mut().get_mut();
                let duplicate = socket.as_fd().try_clone_to_owned()?;
                let duplicate = std::net::TcpStream::from(duplicate);
                duplicate.set_nonblocking(true)?;
                let left_behind = std::mem::replace(socket, TcpStream::from_std(duplicate)?);
                drop(left_behind);
                Ok(ClientStream::Tls(tls))
            }
        }
    }
}

impl ServerStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, ServerStream::Tls(_))
    }

    /// Non-blocking liveness probe for an idle connection: true when the
    /// socket has nothing to read (the server neither closed it nor said
    /// anything). A byte that is there is consumed, so a connection that fails
    /// the probe must be closed, not used.
    ///
    /// For TLS the raw socket is probed, under the TLS layer: a server that
    /// closed shows as readable (a close_notify alert or EOF), which is what
    /// matters. Plaintext the TLS layer has already read off the socket and
    /// buffered is not seen; the server has no reason to send any to an idle
    /// connection, and the session notices it at the next read anyway.
    pub fn is_idle_and_open(&self) -> bool {
        let mut probe = [0u8; 1];
        let read = match self {
            ServerStream::Plain(s) => s.try_read(&mut probe),
            ServerStream::Tls(s) => s.inner.get_ref().0.try_read(&mut probe),
            ServerStream::Unix(s) => s.try_read(&mut probe),
        };
        matches!(read, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Sets `SO_RCVLOWAT` on the TCP socket (under TLS too); see
    /// `net/low_water.rs`. A Unix-domain socket is readable whatever the
    /// mark: nothing is set, and `Unsupported` says so.
    pub fn set_receive_low_water(&self, bytes: i32) -> io::Result<()> {
        match self {
            ServerStream::Plain(s) => super::low_water::set(s.get_ref(), bytes),
            ServerStream::Tls(s) => super::low_water::set(s.inner.get_ref().0, bytes),
            ServerStream::Unix(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }
}

impl ServerStream {
    /// A server's plain TCP socket, moved off tokio's own registration.
    pub fn plain(socket: TcpStream) -> io::Result<Self> {
        Ok(ServerStream::Plain(ReadInterest::new(socket.into_std()?)?))
    }

    /// A server's Unix-domain socket, likewise.
    pub fn unix(socket: tokio::net::UnixStream) -> io::Result<Self> {
        Ok(ServerStream::Unix(ReadInterest::new(socket.into_std()?)?))
    }
}

/// A TLS stream whose writes complete only when their records reached the
/// socket (see the module comment).
pub struct WriteThrough<S> {
    inner: S,
    /// Bytes the TLS layer took in an earlier `poll_write` that returned
    /// `Pending` while its records were still being written; reported by the
    /// next `poll_write` (which callers make with the same bytes again).
    accepted: usize,
}

impl<S> WriteThrough<S> {
    pub fn new(inner: S) -> Self {
        WriteThrough { inner, accepted: 0 }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteThrough<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteThrough<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.accepted == 0 {
            this.accepted = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        }
        let flushed = ready!(Pin::new(&mut this.inner).poll_flush(cx));
        let n = std::mem::take(&mut this.accepted);
        Poll::Ready(flushed.map(|()| n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Reads what `stream` holds into `buf` as tokio's `read_buf` does, for
/// the TLS streams (a plain socket reads straight into `buf`, see
/// `ReadInterest::poll_read_into`).
fn poll_read_buf<R: AsyncRead + Unpin>(
    stream: &mut R,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    if buf.capacity() == buf.len() {
        buf.reserve(64);
    }
    let spare = buf.spare_capacity_mut();
    let mut read = ReadBuf::uninit(spare);
    ready!(Pin::new(stream).poll_read(cx, &mut read))?;
    let n = read.filled().len();
    // SAFETY: the reader initialized (filled) the first `n` spare bytes.
    unsafe { buf.set_len(buf.len() + n) };
    Poll::Ready(Ok(n))
}

impl ClientStream {
    /// Reads what the client sent into `buf`; 0 when it closed. The
    /// session's one read of its client (a plain socket without tokio's
    /// `ReadBuf` layers: it runs for every request), polled by the
    /// session's wait together with its other sources.
    #[inline]
    pub fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            ClientStream::Plain(s) => s.poll_read_into(cx, buf),
            ClientStream::Tls(s) => poll_read_buf(&mut **s, cx, buf),
            ClientStream::Detached => Poll::Ready(Err(detached())),
        }
    }
}

impl ServerStream {
    /// Reads what the server sent into `buf`; 0 when it closed (as
    /// [`ClientStream::poll_read_into`]).
    #[inline]
    pub fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            ServerStream::Plain(s) => s.poll_read_into(cx, buf),
            ServerStream::Tls(s) => poll_read_buf(&mut **s, cx, buf),
            ServerStream::Unix(s) => s.poll_read_into(cx, buf),
        }
    }
}

fn detached() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "connection is detached from its socket",
    )
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            ClientStream::Detached => Poll::Ready(Err(detached())),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            ClientStream::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => {
                let buf = bufs
                    .iter()
                    .find(|b| !b.is_empty())
                    .map_or(&[][..], |b| &**b);
                Pin::new(&mut **s).poll_write(cx, buf)
            }
            ClientStream::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        matches!(self, ClientStream::Plain(s) if s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            ClientStream::Detached => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            ClientStream::Detached => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ServerStream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            ServerStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ServerStream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            ServerStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ServerStream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ServerStream::Tls(s) => {
                let buf = bufs
                    .iter()
                    .find(|b| !b.is_empty())
                    .map_or(&[][..], |b| &**b);
                Pin::new(&mut **s).poll_write(cx, buf)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerStream::Plain(s) => s.is_write_vectored(),
            ServerStream::Unix(s) => s.is_write_vectored(),
            ServerStream::Tls(_) => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ServerStream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            ServerStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ServerStream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            ServerStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
