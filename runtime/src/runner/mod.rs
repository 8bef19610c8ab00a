//! The runner: graphs of one function for every captured size, with dispatch, replay and eager
//! fallback ([`Runner`], in `run.rs`), capture between calls (`background.rs`), the [`Output`] of a run borrowing it (`output.rs`), its
//! graph memory (release, resume, estimate: `memory.rs`), refresh for new weights
//! (`refresh.rs`), staged calls written straight into its input buffers ([`Staged`],
//! `staged.rs`) and the runner typed as one annotated function's ([`FnRunner`], `typed.rs`).

mod background;
mod memory;
mod output;
mod refresh;
mod run;
mod staged;
mod typed;

pub use memory::MemoryEstimate;
pub use output::Output;
pub use refresh::{RefreshError, RefreshReport};
pub use run::{EAGER_ENV, EagerFn, NoLive, NoStatics, Runner};
pub use staged::Staged;
pub use typed::FnRunner;
pub use typed::refresh as refresh_typed;
