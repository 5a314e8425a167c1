//! The `sparse_layer!` proc-macro (to be written).
#![deny(missing_docs)]
