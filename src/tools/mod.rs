//! Tools beside the product: `explain`, `check`, `import-gitlab` and `demo`. The product
//! never imports them.

pub mod check;
pub mod demo;
pub mod explain;
pub mod import;
