//! Safe, typed op launchers.
//!
//! Every launcher takes the [`Runtime`](crate::Runtime) first, records itself with
//! `enter_op` (so a failed capture names the op and the caller's line: the launchers are
//! `#[track_caller]`), validates shapes and dtypes (an
//! [`Error::InvalidArgument`](cudagraph_runtime::Error) naming the op, never a panic),
//! allocates its outputs with `Runtime::alloc` (from the graph pool during a capture) and
//! enqueues its kernel on the runtime's stream. An empty batch (0 rows) is an error.
//!
//! All tensors are contiguous and row-major; activations and weights are bf16, computed in f32.

mod attention;
mod cache_rows;
mod check;
mod columns;
mod elementwise;
mod fused_linear;
mod gemv;
mod linear;
mod multi_token;
mod norm;
mod prefill;
mod rope;
mod rope_attention;
mod rope_scaling;
mod sampling;
mod step;

pub use attention::{AttentionShape, MAX_ATTENTION_CONTEXT, MAX_HEAD_DIM, attention_decode};
pub use cache_rows::{PrefillChunk, STEP_TILE_ROWS, StepRows};
pub use columns::{concat, split};
pub use elementwise::{add, add_bias, cast, embedding, fill_uniform, mul, scale, silu_mul};
pub use fused_linear::{add_rms_norm_linear, rms_norm_linear, silu_mul_linear};
pub use linear::{linear, linear_bias};
pub use multi_token::{attention_multi, rope_kv_write_multi};
pub use norm::{add_rms_norm, rms_norm};
pub use prefill::{attention_prefill, rope_kv_write_prefill};
pub use rope::{QkNorm, rope_kv_write, rope_kv_write_qk_norm};
pub use rope_attention::rope_attention_decode;
pub use rope_scaling::{RopeScaling, YarnParams};
pub use sampling::{argmax_rows, argmax_rows_padded};
pub use step::{attention_step, rope_kv_write_step};
