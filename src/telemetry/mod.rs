//! What the gate tells the operator: metrics (a sink of relaxed atomics, read at scrape
//! time through narrow handles). It imports nothing from the product.

pub mod metrics;
