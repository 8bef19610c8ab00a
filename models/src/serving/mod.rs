//! Continuous batching on the native decoder: a seeded chat-like trace of requests, a
//! scheduler that packs every running sequence's decode token with chunks of waiting prompts
//! into steps of at most a token budget, the step's device tables, and the figures a serving
//! engine is judged by (tokens/s, time to first token, time per output token).
//!
//! The step itself is [`Llama::forward_step`](crate::llama::Llama::forward_step): one token
//! per row, graphed by the token count; `examples/serve_bench` runs a trace through it in four
//! modes (eager, decode-only graphs, every step graphed, attention in eager islands).
//!
//! * [`trace`]: the requests (arrival, prompt, output length), reproducible from a seed;
//! * [`tables`]: a step's pieces turned into the forward's inputs;
//! * [`scheduler`]: which tokens go into the next step, and what a step's sampled ids do;
//! * [`metrics`]: percentiles and the per-run report.

pub mod metrics;
pub mod scheduler;
pub mod tables;
pub mod trace;

pub use metrics::{RunReport, percentile};
pub use scheduler::{Scheduler, SchedulerConfig, StepPlan};
pub use tables::{Piece, StepTables, StepTensors};
pub use trace::{Request, TraceConfig, chat_trace};
