//! Body types: requests and responses stream through without being buffered, except the
//! callback's small form body, which the gate has read and verified.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the client's streamed body did: bytes passed, and whether it failed (malformed
/// chunking, client gone mid-body) — a failure of the client's, not the upstream's.
#[derive(Default)]
pub struct BodyStats {
    pub bytes: AtomicU64,
    pub failed: std::sync::atomic::AtomicBool,
}

fn poll_incoming(
    b: &mut Incoming,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    Pin::new(b).poll_frame(cx).map_err(BoxError::from)
}

/// A buffered body: its one frame, then the end.
fn poll_full(b: &mut Option<Bytes>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    Poll::Ready(b.take().map(|d| Ok(Frame::data(d))))
}

/// What goes upstream: the client's body, streamed and counted, or a verified, buffered one.
pub enum ReqBody {
    Stream(Incoming, Arc<BodyStats>),
    Full(Option<Bytes>),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReqBody::Stream(b, stats) => {
                let r = poll_incoming(b, cx);
                match &r {
                    Poll::Ready(Some(Ok(f))) => {
                        if let Some(d) = f.data_ref() {
                            stats.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => stats.failed.store(true, Ordering::Relaxed),
                    _ => {}
                }
                r
            }
            ReqBody::Full(b) => poll_full(b),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Stream(b, _) => b.is_end_stream(),
            ReqBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Stream(b, _) => b.size_hint(),
            ReqBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

/// What goes back to the client: the upstream's body, streamed, or a page of the gate's.
pub enum RespBody {
    Upstream(Incoming),
    Pooled(super::pool::PooledBody),
    Wire(super::wire::WireBody),
    Full(Option<Bytes>),
}

impl RespBody {
    pub fn empty() -> RespBody {
        RespBody::Full(None)
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RespBody::Upstream(b) => poll_incoming(b, cx),
            RespBody::Pooled(b) => Pin::new(b).poll_frame(cx),
            RespBody::Wire(b) => Pin::new(b).poll_frame(cx),
            RespBody::Full(b) => poll_full(b),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Upstream(b) => b.is_end_stream(),
            RespBody::Pooled(b) => b.is_end_stream(),
            RespBody::Wire(b) => b.is_end_stream(),
            RespBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Upstream(b) => b.size_hint(),
            RespBody::Pooled(b) => b.size_hint(),
            RespBody::Wire(b) => b.size_hint(),
            RespBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

/// One access-log line, written when the response body is finished or dropped (so it
/// carries the bytes actually sent). The path only: the query may hold a token.
pub struct AccessLog {
    pub method: Method,
    pub path: String,
    pub client: SocketAddr,
    pub status: u16,
    pub start: Instant,
    pub upstream: Option<Duration>,
    pub req_bytes: Option<Arc<BodyStats>>,
    pub req_bytes_fixed: u64,
    pub reason: Option<&'static str>,
}

/// A response body that counts what it sends and writes the access log when done.
pub struct Logged {
    inner: RespBody,
    log: Option<Box<AccessLog>>,
    sent: u64,
}

impl Logged {
    pub fn new(inner: RespBody, log: AccessLog) -> Logged {
        Logged {
            inner,
            log: Some(Box::new(log)),
            sent: 0,
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(l) = self.log.take() {
            crate::telemetry::metrics::METRICS.request(&l.method, l.status);
            if let Some(u) = l.upstream {
                crate::telemetry::metrics::METRICS
                    .upstream_latency
                    .observe(u);
            }
            let req_bytes = l
                .req_bytes
                .as_ref()
                .map_or(l.req_bytes_fixed, |c| c.bytes.load(Ordering::Relaxed));
            crate::telemetry::access::log(&crate::telemetry::access::AccessLine {
                method: l.method.as_str(),
                path: &l.path,
                status: l.status,
                bytes_in: req_bytes,
                bytes_out: self.sent,
                total: l.start.elapsed(),
                upstream: l.upstream,
                client: l.client,
                reason: l.reason,
            });
        }
    }
}

impl Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref() {
                this.sent += d.len() as u64;
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
