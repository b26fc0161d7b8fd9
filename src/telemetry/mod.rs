//! What the gate tells the operator: metrics (a sink of relaxed atomics, read at scrape
//! time through narrow handles), the access log and the buffered log output. It imports nothing from the product.

pub mod access;
pub mod audit;
mod line;
pub mod logbuf;
pub mod metrics;
