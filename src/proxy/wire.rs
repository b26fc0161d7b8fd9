//! Requests whose body the gate holds whole, sent on the gate's own HTTP/1.1 codec
//! (`codec.rs`): the head (and the small body) in one write, the response head read and
//! parsed in the request's own task, the body streamed from the socket as the client's
//! side asks for it (back-pressure: nothing is read that the client has not made room for).
//!
//! A connection is reused only when its message ended exactly where its framing said and
//! nothing more had arrived; anything else closes it, so one response can never be read as
//! part of the next request's.

use std::future::poll_fn;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::body::BoxError;
use super::codec::{self, BadResponse, ChunkedDecoder, Decoded, Framing};
use super::pool::Pool;

/// Each read asks for this much room: the same 16 KiB the hyper connections read with (RSS
/// at 1,000 concurrent downloads, bench/NOTES.md).
const READ_CHUNK: usize = 16 * 1024;

/// One upstream connection on the gate's codec.
pub struct WireConn {
    tcp: TcpStream,
    /// Bytes read and not yet used: the rest of a head, or body.
    buf: BytesMut,
    /// The request head being written, kept for its capacity.
    out: Vec<u8>,
    names: codec::NameCache,
}

pub type Conn = Box<WireConn>;

/// Why a request got no response head.
#[derive(Debug)]
pub enum WireError {
    /// The request could not be written: it was not sent and may go on another connection.
    Unsent(std::io::Error),
    Io(std::io::Error),
    Closed,
    Bad(BadResponse),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Unsent(e) => write!(f, "request not written: {e}"),
            WireError::Io(e) => write!(f, "upstream connection failed: {e}"),
            WireError::Closed => f.write_str("connection closed before the response head"),
            WireError::Bad(e) => write!(f, "bad response: {e}"),
        }
    }
}

impl WireConn {
    pub fn new(tcp: TcpStream) -> Conn {
        Box::new(WireConn {
            tcp,
            buf: BytesMut::new(),
            out: Vec::new(),
            names: codec::NameCache::default(),
        })
    }

    /// Whether an idle connection can take a request: no close and no stray bytes from the
    /// upstream since its last message. Costs no system call unless the socket became
    /// readable meanwhile.
    pub fn is_usable(&mut self) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        match self.tcp.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.tcp.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Write the request, then read up to the end of the final response head.
    pub async fn exchange(
        &mut self,
        parts: &request::Parts,
        body: Option<&Bytes>,
    ) -> Result<codec::Head, WireError> {
        codec::encode_request(parts, &mut self.out);
        self.write_all(body).await?;
        loop {
            if !self.buf.is_empty() {
                if let Some(head) =
                    codec::parse_response(&mut self.buf, &parts.method, &mut self.names)
                        .map_err(WireError::Bad)?
                {
                    return Ok(head);
                }
            }
            match poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(0) => return Err(WireError::Closed),
                Ok(_) => {}
                Err(e) => return Err(WireError::Io(e)),
            }
        }
    }

    /// The head and the body together: one `writev` for both in the common case. A failure
    /// before the first byte left is `Unsent` (the request may go on another connection);
    /// after it, the upstream may have seen part of the request, which is never sent again.
    async fn write_all(&mut self, body: Option<&Bytes>) -> Result<(), WireError> {
        let empty = Bytes::new();
        let body = body.unwrap_or(&empty);
        let (mut head_at, mut body_at) = (0, 0);
        while head_at < self.out.len() || body_at < body.len() {
            let bufs = [
                IoSlice::new(&self.out[head_at..]),
                IoSlice::new(&body[body_at..]),
            ];
            let written =
                poll_fn(|cx| Pin::new(&mut self.tcp).poll_write_vectored(cx, &bufs)).await;
            let n = match written {
                Ok(0) => Err(std::io::Error::from(std::io::ErrorKind::WriteZero)),
                other => other,
            }
            .map_err(|e| match head_at {
                0 => WireError::Unsent(e),
                _ => WireError::Io(e),
            })?;
            let to_head = n.min(self.out.len() - head_at);
            head_at += to_head;
            body_at += n - to_head;
        }
        Ok(())
    }

    /// Read more into `buf`, with room for a whole `READ_CHUNK` each time (as hyper's
    /// exact read strategy: fewer, fuller reads while a large body streams); `Ok(0)` at the
    /// upstream's close.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK {
            self.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.tcp), cx, &mut self.buf)
    }
}

/// Send one request whose body is whole, on `conn`, and build the response around the
/// rest of the message. On any error the connection is closed; `WireError::Unsent` says the
/// request may go on another.
pub async fn send(
    pool: &Arc<Pool>,
    mut conn: Conn,
    parts: &request::Parts,
    body: Option<&Bytes>,
) -> Result<Response<WireBody>, WireError> {
    let head = conn.exchange(parts, body).await?;
    let state = match head.framing {
        Framing::Empty => State::Done,
        Framing::Length(n) => State::Length(n),
        Framing::Chunked => State::Chunked(ChunkedDecoder::default()),
        Framing::UntilClose => State::UntilClose,
    };
    let mut body = WireBody {
        conn: Some(conn),
        state,
        keep_alive: head.keep_alive,
        pool: Arc::clone(pool),
        whole: None,
    };
    body.take_whole_if_here();
    Ok(head.response.map(|()| body))
}

/// Up to `left` bytes of a length-delimited body off the front of `buf`, counted off.
fn split_length(buf: &mut BytesMut, left: &mut u64) -> Bytes {
    let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
    *left -= n as u64;
    buf.split_to(n).freeze()
}

enum State {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    /// The message has been read to its end.
    Done,
}

/// The response body, read from the connection as it is polled. A body that arrived with
/// its head (a small response) is handed out whole, and its connection is back in the pool
/// before the client's response is written.
pub struct WireBody {
    conn: Option<Conn>,
    state: State,
    keep_alive: bool,
    pool: Arc<Pool>,
    whole: Option<Bytes>,
}

impl WireBody {
    fn take_whole_if_here(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if let State::Length(left) = &mut self.state {
            if conn.buf.len() as u64 >= *left {
                self.whole = Some(split_length(&mut conn.buf, left));
                self.state = State::Done;
            }
        }
        if matches!(self.state, State::Done) {
            self.finish();
        }
    }

    /// The message is complete: the connection goes back if nothing follows it.
    fn finish(&mut self) {
        self.state = State::Done;
        if let Some(conn) = self.conn.take() {
            if self.keep_alive && conn.buf.is_empty() {
                self.pool.checkin_wire(conn);
            }
        }
    }

    fn next_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BoxError>>> {
        loop {
            if let Some(data) = self.whole.take() {
                return Poll::Ready(Some(Ok(data)));
            }
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let data = match &mut self.state {
                State::Done => None,
                State::Length(left) => {
                    if conn.buf.is_empty() {
                        None
                    } else {
                        let d = split_length(&mut conn.buf, left);
                        if *left == 0 {
                            self.state = State::Done;
                        }
                        Some(d)
                    }
                }
                State::Chunked(dec) => match dec.decode(&mut conn.buf)? {
                    Decoded::Data(d) => Some(d),
                    Decoded::End => {
                        self.state = State::Done;
                        None
                    }
                    Decoded::More => None,
                },
                State::UntilClose => (!conn.buf.is_empty()).then(|| conn.buf.split().freeze()),
            };
            if matches!(self.state, State::Done) {
                self.finish();
            }
            if let Some(d) = data {
                return Poll::Ready(Some(Ok(d)));
            }
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(self.state, State::UntilClose) => {
                    self.state = State::Done;
                    self.conn = None;
                    return Poll::Ready(None);
                }
                // errors close the connection in `poll_frame`, as a framing error does
                Ok(0) => return Poll::Ready(Some(Err("upstream closed mid-body".into()))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }
}

impl Body for WireBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = this.next_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &r {
            this.conn = None;
            this.state = State::Done;
        }
        r.map(|o| o.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.whole.is_none() && matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.whole, &self.state) {
            (Some(d), _) => SizeHint::with_exact(d.len() as u64),
            (None, State::Done) => SizeHint::with_exact(0),
            (None, State::Length(n)) => SizeHint::with_exact(*n),
            _ => SizeHint::default(),
        }
    }
}
