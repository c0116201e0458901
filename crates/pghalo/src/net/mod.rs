//! Byte streams and message I/O shared by the client and server sides:
//! plain TCP, Unix sockets, TLS over TCP in either role (`tls.rs`), and
//! reading whole protocol messages into a reusable buffer.
//!
//! Owns: sockets as streams, TLS configurations, framed reads. Must not:
//! route or pool.

pub mod home;
pub mod tls;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use pghalo_protocol::{Decoder, FrameError, Message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use tls::{ClientTls, ServerTls};

/// How much a read asks the kernel for at once; messages larger than this
/// are read in several steps.
pub const READ_CHUNK: usize = 16 * 1024;

/// The least room a whole-message read makes: login messages are small, and
/// a client's buffer stays with its session (10,000 idle clients).
const MIN_READ: usize = 1024;

/// A connected socket, whatever its transport.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// A client connection after pghalo's handshake as the TLS server.
    TlsServer(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// A backend connection after pghalo's handshake as the TLS client.
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// Low latency matters more than packet count for a request/response
    /// protocol; keepalives find peers that vanished without a FIN.
    pub fn tcp(stream: TcpStream) -> Stream {
        let _ = stream.set_nodelay(true);
        let sock = socket2::SockRef::from(&stream);
        let _ = sock.set_keepalive(true);
        Stream::Tcp(stream)
    }

    /// Whether the kernel holds a close or unread bytes from the peer.
    /// Asked of the socket itself: tokio learns of a FIN only when its
    /// driver next polls, which on a busy runtime can be after an idle
    /// connection whose server died is handed out again.
    pub fn closed_or_unread(&self) -> bool {
        let sock = match self {
            Stream::Tcp(s) => socket2::SockRef::from(s),
            Stream::Unix(s) => socket2::SockRef::from(s),
            Stream::TlsServer(t) => socket2::SockRef::from(t.get_ref().0),
            Stream::TlsClient(t) => socket2::SockRef::from(t.get_ref().0),
        };
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        // The socket is non-blocking: nothing to read is WouldBlock.
        !matches!(sock.peek(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Whether the peer closed or sent something, as far as this thread's
    /// runtime has recorded: one read attempt that must not wait (not even
    /// for a timer tick); on a socket registered here it makes a system
    /// call only when there is something to read. Pending is the only
    /// quiet answer.
    pub fn said_something(&mut self) -> bool {
        let mut probe = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut probe);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // Outside the task's cooperative budget: once it is spent, tokio
        // answers Pending without looking at the readiness it recorded.
        let mut read = tokio::task::unconstrained(std::future::poll_fn(|cx| {
            std::pin::Pin::new(&mut *self).poll_read(cx, &mut buf)
        }));
        std::pin::Pin::new(&mut read).poll(&mut cx).is_ready()
    }

    /// Whether [`rehome`](Self::rehome) can move the socket. A TLS stream
    /// cannot be taken apart and put together again; it keeps its
    /// registration and still works from any thread, through a wake-up of
    /// its home thread for each event.
    pub fn can_rehome(&self) -> bool {
        matches!(self, Stream::Tcp(_) | Stream::Unix(_))
    }

    /// Re-registers the socket with the calling thread's runtime, so its
    /// readiness is delivered here (`home`); a TLS stream is returned as it
    /// was.
    pub fn rehome(self) -> io::Result<Stream> {
        match self {
            Stream::Tcp(s) => Ok(Stream::Tcp(TcpStream::from_std(s.into_std()?)?)),
            Stream::Unix(s) => Ok(Stream::Unix(UnixStream::from_std(s.into_std()?)?)),
            tls => Ok(tls),
        }
    }

    /// Only TCP carries TLS: PostgreSQL answers 'N' to an SSLRequest on a
    /// Unix socket, and libpq never sends one there.
    pub fn can_start_tls(&self) -> bool {
        matches!(self, Stream::Tcp(_))
    }

    pub fn is_encrypted(&self) -> bool {
        matches!(self, Stream::TlsServer(_) | Stream::TlsClient(_))
    }

    /// The TLS handshake as the server, after 'S' was sent. On failure the
    /// socket is dropped: there is nobody left to answer in plain text.
    pub async fn accept_tls(self, tls: &ServerTls) -> io::Result<Stream> {
        match self {
            Stream::Tcp(tcp) => Ok(Stream::TlsServer(Box::new(tls.accept(tcp).await?))),
            _ => Err(not_plain_tcp()),
        }
    }

    /// The TLS handshake as the client of `host`, after the server said 'S'.
    pub async fn connect_tls(self, tls: &ClientTls, host: &str) -> io::Result<Stream> {
        match self {
            Stream::Tcp(tcp) => Ok(Stream::TlsClient(Box::new(tls.connect(host, tcp).await?))),
            _ => Err(not_plain_tcp()),
        }
    }

    /// The certificate a TLS client presented, already verified against
    /// the CA bundle (the handshake fails otherwise).
    pub fn peer_certificate(&self) -> Option<&rustls::pki_types::CertificateDer<'static>> {
        match self {
            Stream::TlsServer(tls) => tls.get_ref().1.peer_certificates()?.first(),
            _ => None,
        }
    }
}

fn not_plain_tcp() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "TLS can only start on a plain TCP connection",
    )
}

// tokio-rustls may return from a write with ciphertext still queued when
// the socket is full, and sends it only on the next write or flush. The
// relay writes a reply and then waits for the other side without
// flushing, so a queued tail (a ReadyForQuery) could wait forever. Hence
// every TLS write tries to flush before returning, and every TLS read
// pushes out whatever is still queued first: the relay polls reads of both
// sockets in the task that wrote, so a socket that drains wakes a read.
fn poll_read_tls<T: AsyncRead + AsyncWrite + Unpin>(
    tls: &mut T,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    if let Poll::Ready(Err(e)) = Pin::new(&mut *tls).poll_flush(cx) {
        return Poll::Ready(Err(e));
    }
    Pin::new(tls).poll_read(cx, buf)
}

fn poll_write_tls<T: AsyncWrite + Unpin>(
    tls: &mut T,
    cx: &mut Context<'_>,
    buf: &[u8],
) -> Poll<io::Result<usize>> {
    // What earlier writes queued goes first, so the queue stays bounded.
    ready!(Pin::new(&mut *tls).poll_flush(cx))?;
    let written = ready!(Pin::new(&mut *tls).poll_write(cx, buf))?;
    // The bytes are taken either way; a failure here shows on the next call.
    let _ = Pin::new(&mut *tls).poll_flush(cx);
    Poll::Ready(Ok(written))
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::TlsServer(s) => poll_read_tls(s.as_mut(), cx, buf),
            Stream::TlsClient(s) => poll_read_tls(s.as_mut(), cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::TlsServer(s) => poll_write_tls(s.as_mut(), cx, buf),
            Stream::TlsClient(s) => poll_write_tls(s.as_mut(), cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            // One slice at a time keeps the flush-after-write rule simple.
            Stream::TlsServer(s) => {
                let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
                poll_write_tls(s.as_mut(), cx, first)
            }
            Stream::TlsClient(s) => {
                let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
                poll_write_tls(s.as_mut(), cx, first)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
            Stream::TlsServer(_) | Stream::TlsClient(_) => false,
        }
    }
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("connection closed")]
    Closed,
    #[error("connection closed in the middle of a message")]
    Truncated,
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Reads one whole message, buffering in `buf` (which may already hold
/// bytes, and keeps whatever follows the message).
pub async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    decoder: &Decoder,
) -> Result<Message, ReadError> {
    loop {
        if let Some(message) = decoder.decode(buf)? {
            return Ok(message);
        }
        let needed = decoder.needed(buf)?.max(1);
        buf.reserve(needed.clamp(MIN_READ, READ_CHUNK * 4));
        if stream.read_buf(buf).await? == 0 {
            return Err(if buf.is_empty() {
                ReadError::Closed
            } else {
                ReadError::Truncated
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test(flavor = "current_thread")]
    async fn a_peer_that_closed_or_spoke_is_seen_at_once() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = Stream::tcp(TcpStream::connect(addr).await.unwrap());
        let (mut peer, _) = listener.accept().unwrap();
        assert!(!stream.closed_or_unread(), "an idle, open connection");

        peer.write_all(b"E").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(stream.closed_or_unread(), "a byte nobody asked for");

        let other = Stream::tcp(TcpStream::connect(addr).await.unwrap());
        let (peer2, _) = listener.accept().unwrap();
        drop(peer2);
        // No await between the close and the question: tokio's driver has
        // not run, only the kernel knows.
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(other.closed_or_unread(), "a closed peer");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_close_the_runtime_recorded_is_seen_with_the_budget_spent() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut stream = Stream::tcp(TcpStream::connect(addr).await.unwrap());
        let (peer, _) = listener.accept().unwrap();
        assert!(!stream.said_something(), "an idle, open connection");
        drop(peer);
        // Let the driver record the close.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // Spend the task's cooperative budget, as a busy relay can.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut spent = false;
        for _ in 0..1000 {
            tx.send(()).unwrap();
            if rx.poll_recv(&mut cx).is_pending() {
                spent = true;
                break;
            }
        }
        assert!(spent, "the budget was never spent");
        assert!(stream.said_something(), "a closed peer");
    }
}
