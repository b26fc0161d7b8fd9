//! The upstream connection pool for plain HTTP/1.1 upstreams (Workhorse, Omnibus nginx on
//! loopback: the sidecar's case). Two kinds of connection, each with its idle list:
//! requests whose body the gate holds whole go on the gate's own codec (`wire.rs`, the
//! common case: GETs and the login callback); requests whose body streams go on hyper's
//! low-level `client::conn::http1`, as described below.
//!
//! Why not hyper-util's pooled client: it runs each upstream connection in a task of its own,
//! hands every request to that task through a channel and the response back through a
//! oneshot, and checks connections out of a SipHash-keyed map behind a mutex. Those are two
//! task wake-ups per request that nginx does not pay. Here the request's own task drives the
//! connection: while waiting for the response head, and then from inside the response body,
//! which the client connection polls as it writes. There is one upstream, so the idle list
//! is a plain LIFO stack (the warmest connection first) with no key.
//!
//! A connection goes back to the pool only when its response body has been read to the end;
//! one dropped earlier (client gone mid-download) is closed, as the message on it is not
//! finished. Idle connections are not polled; checkout polls one once, which reads a close
//! the upstream sent meanwhile, and takes the next one if it was closed.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{request, Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::{BoxError, ReqBody};
use super::wire::{self, WireBody, WireError};

type Driver = http1::Connection<TokioIo<TcpStream>, ReqBody>;

/// One upstream connection: the handle requests are sent on and the future that does the
/// connection's reading and writing.
struct ConnParts {
    sender: http1::SendRequest<ReqBody>,
    driver: Driver,
}

/// Boxed: the connection's state is about a kilobyte, and it moves from the idle list into
/// the request's future and on into the response body (callgrind: unboxed, the extra
/// `memcpy` cost more than the channel hop this pool saves).
type Conn = Box<ConnParts>;

struct Idle<C> {
    conn: C,
    since: Instant,
}

/// Idle connections of one kind, the most recently used last.
struct IdleList<C>(Mutex<Vec<Idle<C>>>);

impl<C> IdleList<C> {
    /// The most recently used connection, unless it has idled too long (then so have all
    /// the older ones, which go too).
    fn pop(&self, idle_timeout: Duration) -> Option<C> {
        let mut list = self.0.lock().ok()?;
        let idle = list.pop()?;
        if idle.since.elapsed() >= idle_timeout {
            list.clear();
            return None;
        }
        Some(idle.conn)
    }

    fn push(&self, conn: C, idle_timeout: Duration, max_idle: usize) {
        let Ok(mut list) = self.0.lock() else {
            return;
        };
        let now = Instant::now();
        let expired = list
            .iter()
            .take_while(|i| now.duration_since(i.since) >= idle_timeout)
            .count();
        list.drain(..expired);
        if list.len() >= max_idle {
            if max_idle == 0 {
                return;
            }
            list.remove(0);
        }
        list.push(Idle { conn, since: now });
    }
}

/// Why a request could not be sent upstream.
#[derive(Debug)]
pub enum SendError {
    ConnectTimeout,
    Connect(std::io::Error),
    Http(hyper::Error),
    Wire(WireError),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::ConnectTimeout => f.write_str("connect timed out"),
            SendError::Connect(e) => write!(f, "connect failed: {e}"),
            SendError::Http(e) => write!(f, "{e}"),
            SendError::Wire(e) => write!(f, "{e}"),
        }
    }
}

pub struct Pool {
    authority: String,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    /// Connections on hyper's client, for requests whose body streams.
    idle: IdleList<Conn>,
    /// Connections on the gate's own codec, for requests whose body is whole (`wire.rs`).
    idle_wire: IdleList<wire::Conn>,
}

impl Pool {
    pub fn new(
        authority: String,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            authority,
            connect_timeout,
            idle_timeout,
            max_idle,
            idle: IdleList(Mutex::new(Vec::new())),
            idle_wire: IdleList(Mutex::new(Vec::new())),
        })
    }

    /// Send a request whose body the gate holds whole (none, or the callback's form) on
    /// the gate's own codec. A request a reused connection could not take is sent again
    /// on another; one that was written is never sent twice.
    pub async fn send_whole(
        self: &Arc<Self>,
        mut parts: request::Parts,
        body: Option<Bytes>,
    ) -> Result<Response<WireBody>, SendError> {
        default_host(&mut parts.headers, &self.authority);
        loop {
            let (conn, reused) = match self.checkout_wire() {
                Some(c) => (c, true),
                None => (
                    wire::WireConn::new(self.connect_tcp_bounded().await?),
                    false,
                ),
            };
            match wire::send(self, conn, &parts, body.as_ref()).await {
                Ok(resp) => return Ok(resp),
                Err(WireError::Unsent(_)) if reused => continue,
                Err(e) => return Err(SendError::Wire(e)),
            }
        }
    }

    fn checkout_wire(&self) -> Option<wire::Conn> {
        loop {
            let mut conn = self.idle_wire.pop(self.idle_timeout)?;
            if conn.is_usable() {
                return Some(conn);
            }
        }
    }

    pub(super) fn checkin_wire(&self, conn: wire::Conn) {
        self.idle_wire.push(conn, self.idle_timeout, self.max_idle);
    }

    /// Send one request and wait for the response head, driving the connection meanwhile.
    /// A request that a reused connection could not take (closed by the upstream while
    /// idle) is sent again on another; one that was written is never sent twice.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<ReqBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        default_host(req.headers_mut(), &self.authority);
        loop {
            let (mut conn, reused) = match self.checkout().await {
                Some(c) => (c, true),
                None => (self.connect().await?, false),
            };
            let sent = conn.sender.try_send_request(req);
            match drive_until(&mut conn.driver, sent).await {
                Ok(resp) => {
                    let pool = Arc::clone(self);
                    return Ok(resp.map(|body| PooledBody {
                        body,
                        conn: Some(conn),
                        pool,
                    }));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }

    /// The most recently used idle connection that is still open and ready.
    async fn checkout(&self) -> Option<Conn> {
        loop {
            let mut conn = self.idle.pop(self.idle_timeout)?;
            if poll_fn(|cx| Poll::Ready(is_usable(&mut conn, cx))).await {
                return Some(conn);
            }
        }
    }

    fn checkin(&self, conn: Conn) {
        self.idle.push(conn, self.idle_timeout, self.max_idle);
    }

    async fn connect(&self) -> Result<Conn, SendError> {
        let tcp = self.connect_tcp_bounded().await?;
        let (sender, driver) = http1::Builder::new()
            // a fixed 16 KiB read buffer per connection. hyper's adaptive one grows to
            // ~400 KB while a large response streams; at 1,000 concurrent 1 MiB downloads
            // the peak RSS was 82.7 MiB adaptive, 75.9 at 32 KiB, 67.4 at 24, 59.7 at 16.
            // Same-run A/B, 32 → 16 KiB: 1 MiB req/s and CPU per request unchanged within
            // noise, 1 MiB p99 at 64 connections 104-113 → 210-243 ms (bench/NOTES.md)
            .read_buf_exact_size(Some(16 * 1024))
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(SendError::Http)?;
        Ok(Box::new(ConnParts { sender, driver }))
    }

    /// A new TCP connection within the connect timeout, counted.
    async fn connect_tcp_bounded(&self) -> Result<TcpStream, SendError> {
        let tcp = tokio::time::timeout(self.connect_timeout, self.connect_tcp())
            .await
            .map_err(|_| SendError::ConnectTimeout)??;
        crate::telemetry::metrics::METRICS.upstream_connection_opened();
        Ok(tcp)
    }

    /// Each address the name resolves to in turn; the last error if none answers.
    async fn connect_tcp(&self) -> Result<TcpStream, SendError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(self.authority.as_str())
            .await
            .map_err(SendError::Connect)?
            .collect();
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    let sock = socket2::SockRef::from(&tcp);
                    let _ = sock.set_tcp_keepalive(
                        &socket2::TcpKeepalive::new().with_time(Duration::from_secs(60)),
                    );
                    return Ok(tcp);
                }
                Err(e) => last = e,
            }
        }
        Err(SendError::Connect(last))
    }
}

/// A Host field for a client that sent none (HTTP/1.0), as hyper-util's client added one:
/// `client::conn` writes the request as it is (the target already in origin form, which
/// `Proxy::rewrite` makes for this pool).
fn default_host(headers: &mut http::HeaderMap, authority: &str) {
    if !headers.contains_key(http::header::HOST) {
        if let Ok(v) = http::HeaderValue::from_str(authority) {
            headers.insert(http::header::HOST, v);
        }
    }
}

/// Poll the connection once (reading any close the upstream sent while it sat idle), then
/// ask whether it takes a request now. A connection that is not ready at once is not
/// waited for: another is opened instead.
fn is_usable(conn: &mut Conn, cx: &mut Context<'_>) -> bool {
    if Pin::new(&mut conn.driver).poll(cx).is_ready() {
        return false;
    }
    matches!(conn.sender.poll_ready(cx), Poll::Ready(Ok(())))
}

/// Await `sent` while polling the connection that carries it. If the connection finishes
/// first (closed or failed), `sent` resolves with its error.
async fn drive_until<F, T>(driver: &mut Driver, sent: F) -> T
where
    F: Future<Output = T>,
{
    let mut sent = std::pin::pin!(sent);
    let mut driver_done = false;
    poll_fn(|cx| {
        // the connection first: it writes the request and reads the response head, which
        // `sent` then finds ready in the same poll
        if !driver_done && Pin::new(&mut *driver).poll(cx).is_ready() {
            // closed or failed: the dispatcher is gone and `sent` resolves with its error
            driver_done = true;
        }
        sent.as_mut().poll(cx)
    })
    .await
}

/// The upstream's response body, which drives its connection while it is read and returns
/// the connection to the pool when it has been read to the end.
pub struct PooledBody {
    body: Incoming,
    conn: Option<Conn>,
    pool: Arc<Pool>,
}

impl PooledBody {
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body)
            .poll_frame(cx)
            .map_err(BoxError::from)
    }

    /// The message is complete: poll the connection once more so that it settles into its
    /// idle state, and pool it unless that poll found it closed.
    fn release(&mut self, cx: &mut Context<'_>) {
        if let Some(mut conn) = self.conn.take() {
            if Pin::new(&mut conn.driver).poll(cx).is_pending() {
                self.pool.checkin(conn);
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        // the body signals that it wants data; the connection then reads and hands it over
        let mut r = this.poll_body(cx);
        if r.is_pending() {
            if let Some(conn) = this.conn.as_mut() {
                if Pin::new(&mut conn.driver).poll(cx).is_ready() {
                    // closed or failed: not reusable; the body reports how it ended
                    this.conn = None;
                }
            }
            r = this.poll_body(cx);
        }
        match &r {
            Poll::Ready(None) => this.release(cx),
            Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // a body with nothing left to read (HEAD, 204, 304, Content-Length: 0, or read to
        // its end without the final poll) leaves its connection reusable
        if self.body.is_end_stream() {
            // settle the connection into its idle state now (nothing to wake: the next
            // checkout polls it again), as `release` does for a body read to its end
            let waker = std::task::Waker::noop();
            self.release(&mut Context::from_waker(waker));
        }
    }
}
