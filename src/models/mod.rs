//! Models written with `#[cuda_graph]`: what the examples, tests and benches run.

pub mod llama;
