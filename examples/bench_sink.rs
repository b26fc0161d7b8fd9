//! A byte-counting HTTP sink for the upload benchmark (bench/bench.py): reads every request
//! body to the end without keeping it and answers the byte count.
//!   bench_sink 127.0.0.1:18185

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

async fn count(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut body = req.into_body();
    let mut n = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(d) = frame.data_ref() {
            n += d.len() as u64;
        }
    }
    Ok(Response::new(Full::new(Bytes::from(n.to_string()))))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18185".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), hyper::service::service_fn(count))
                .await;
        });
    }
}
