//! # cudagraph
//!
//! Turn a model's forward function into CUDA graphs: one graph per batch size captured at init,
//! each call dispatched to the smallest captured size that fits (inputs padded), replayed, with an
//! eager fallback for shapes no graph covers.
//!
//! ```no_run
//! use cudagraph::{cuda_graph, DType, InputSpec, Result, Runtime, Tensor};
//!
//! struct Model { w: Tensor }
//!
//! impl Model {
//!     #[cuda_graph(sizes = [1, 2, 4, 8])]
//!     fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
//!         cudagraph::ops::linear(rt, x, &self.w)
//!     }
//! }
//!
//! fn main() -> Result<()> {
//!     let rt = Runtime::new(0)?;
//!     let model = Model { w: rt.zeros(&[16, 16], DType::BF16)? };
//!     let mut graphs = model.forward_graphs(&rt, [InputSpec::new(DType::BF16, &[16])?])?;
//!     let x = rt.zeros(&[3, 16], DType::BF16)?;
//!     let y = graphs.run([&x])?; // replays the size-4 graph, returns 3 rows
//!     assert_eq!(y.shape(), &[3, 16]);
//!     Ok(())
//! }
//! ```
//!
//! The crates behind it: `cudagraph-macros` (the attribute), `cudagraph-runtime` (everything
//! re-exported at this crate's root) and `cudagraph-kernels` (the ops under [`ops`]).

extern crate self as cudagraph;

pub use cudagraph_macros::cuda_graph;
pub use cudagraph_runtime::*;

/// The `half` crate, for bf16/f16 host values (`rt.upload(&[half::bf16::from_f32(1.0)], ..)`,
/// `rt.download::<half::bf16>(&t)`): re-exported so a user crate needs no dependency of its own.
pub use half;

/// CUDA kernels and their safe launchers.
pub use cudagraph_kernels as kernels;
/// The ops a model's forward calls (`linear`, `rms_norm`, `attention_decode`, ...).
pub use cudagraph_kernels::ops;

pub mod models;
