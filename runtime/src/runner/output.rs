//! [`Output`]: the result of a run, borrowing the runner.

use std::ops::Deref;

use crate::backend::Backend;
use crate::error::Result;
use crate::seal::Seal;

/// The result of [`Runner::run`](crate::Runner::run): the first `n` rows of the output.
///
/// It borrows the runner: the next `run` replays into the same memory and `release_memory`
/// unmaps it, so holding an `Output` (or a view of it) across either is a compile error
/// (E0499: the runner is borrowed mutably twice). It derefs to the backend's tensor
/// (cudagraph's `Tensor` with the native backend), so ops take it as input; that `Tensor` is not
/// `Clone`. To keep a result past the next run, copy it ([`to_owned`](Self::to_owned)) or
/// download it. (A candle tensor is `Clone`: a clone shares the memory the next replay
/// rewrites, so keep a result with `to_owned`, not `clone`.)
pub struct Output<'r, B: Backend> {
    pub(super) tensor: B::Tensor,
    pub(super) replayed: bool,
    pub(super) size: Option<usize>,
    pub(super) dev: &'r B::Device,
}

impl<B: Backend> Output<'_, B> {
    /// Whether a graph produced it (`false`: the eager fallback ran).
    pub fn replayed(&self) -> bool {
        self.replayed
    }

    /// The captured size whose graph produced it (`None`: the eager fallback ran).
    pub fn size(&self) -> Option<usize> {
        self.size
    }

    /// A copy in new memory of the runner's device, which outlives the output (and the
    /// runner): what to keep past the next `run`.
    #[track_caller]
    pub fn to_owned(&self) -> Result<B::Tensor> {
        B::duplicate(Seal::new(), self.dev, &self.tensor)
    }
}

impl<B: Backend> Deref for Output<'_, B> {
    type Target = B::Tensor;

    fn deref(&self) -> &B::Tensor {
        &self.tensor
    }
}

impl<B: Backend> std::fmt::Debug for Output<'_, B>
where
    B::Tensor: std::fmt::Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("tensor", &self.tensor)
            .field("replayed", &self.replayed)
            .field("size", &self.size)
            .finish()
    }
}
