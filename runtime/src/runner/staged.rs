//! Staged inputs: a call written straight into the runner's static input buffers, then
//! replayed with no input copy (vLLM's persistent input buffers, with lifetimes).
//!
//! [`Runner::stage`] picks the graph for `n` rows and hands out views of the first `n` rows of
//! each static input buffer ([`Staged::inputs`]). The caller writes them on the runner's stream
//! (a host-to-device copy of token ids, or a kernel of its own), then [`Staged::run`] fills the
//! padded rows with their pad values (one launch) and launches the graph: no input copy. The
//! views borrow the [`Staged`], which borrows the runner mutably: holding one across the run,
//! or running the runner another way meanwhile, is a compile error for cudagraph's tensors and
//! plain cudarc's. candle's tensors are reference-counted: a `clone()` of a view outlives the
//! borrow (no memory is freed under it: the buffer lives as long as the runner), and it sees
//! whatever later calls write there.

use crate::Islands;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::policy::OnCaptureError;
use crate::seal::Seal;
use crate::stats::FallbackReason;

use super::output::Output;
use super::run::{NoLive, Runner};

/// A call of `n` rows staged in a runner's static input buffers (see the module's
/// documentation); made by [`Runner::stage`], consumed by [`run`](Self::run).
pub struct Staged<'r, 'm, const N: usize, S, B: Backend, L> {
    runner: &'r mut Runner<'m, N, S, B, L>,
    n: usize,
    slot: usize,
    views: [B::Tensor; N],
}

impl<const N: usize, S, B: Backend, L> std::fmt::Debug for Staged<'_, '_, N, S, B, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged")
            .field("function", &self.runner.core.plan.function)
            .field("rows", &self.n)
            .field("size", &self.runner.core.size_of(self.slot))
            .finish_non_exhaustive()
    }
}

impl<'m, const N: usize, S: crate::StaticArgs + 'm, B: Backend, L: NoLive + 'm>
    Runner<'m, N, S, B, L>
{
    /// Stages a call of `n` rows: the graph of the smallest captured size that holds them is
    /// chosen (and captured now if the plan is lazy or captures in the background and it is
    /// not captured yet), and the first `n` rows of every static
    /// input buffer are handed out to be written ([`Staged::inputs`]); [`Staged::run`] replays
    /// with no input copy. The call runs with the runner's own statics (those it captured
    /// with).
    ///
    /// Errors: `n` is 0 or above the largest captured size (no buffer holds it: use
    /// [`run`](Self::run), which falls back eagerly); the runner is keyed by more than the
    /// batch (its buffers' layout depends on the key: use [`run_with`](Self::run_with)); the
    /// debug mode is on; the runner is released; a capture is under way on the device; the
    /// size's capture failed earlier and the plan aborts on that.
    ///
    /// With cudagraph's tensors (the `cudagraph` facade):
    ///
    /// ```ignore
    /// let staged = graphs.stage(3)?;
    /// let [tokens, positions] = staged.inputs(); // [3] each: the buffers' first rows
    /// rt.upload_into(&[7u32, 8, 9], tokens)?;
    /// rt.upload_into(&[40i32, 12, 3], positions)?;
    /// let logits = staged.run()?; // the graph of the smallest size >= 3, no input copy
    /// ```
    pub fn stage(&mut self, n: usize) -> Result<Staged<'_, 'm, N, S, B, L>> {
        let function = self.core.plan.function;
        if self.core.released {
            return Err(Error::Released { function });
        }
        B::forbid_during_capture(Seal::new(), self.dev, "staging a call")?;
        if !self.core.plan.keys.is_empty() || self.core.inputs.any_bucketed() {
            return Err(Error::invalid(
                function,
                "staged inputs serve runners keyed by the batch alone (this one's buffers are laid out per key): use run_with",
            ));
        }
        if self.core.debug_eager {
            return Err(Error::invalid(
                function,
                "the debug mode (CUDAGRAPH_EAGER) runs every call eagerly: use run, or turn it off",
            ));
        }
        if n == 0 {
            return Err(Error::invalid(
                function,
                "a staged call needs at least 1 row",
            ));
        }
        let Some(slot) = self.core.plan.table.slot(n) else {
            return Err(Error::invalid(
                function,
                format!(
                    "no captured size holds {n} rows (the largest is {}): run() takes it eagerly",
                    self.core.plan.table.max()
                ),
            ));
        };
        if self.core.graphs[slot]
            .as_ref()
            .is_some_and(|g| !B::usable(Seal::new(), &self.core.memory, &g.keep))
        {
            self.drop_unusable();
        }
        // A lazy size is captured now, before anything is staged (a capture fills the buffers
        // with pad values).
        if self.core.graphs[slot].is_none() && self.core.stats.sizes[slot].capture_error.is_none() {
            self.capture_after_build(slot)?;
        }
        if let Some(message) = self.core.stats.sizes[slot].capture_error.clone()
            && self.core.plan.on_capture_error == OnCaptureError::Abort
        {
            return Err(Error::CaptureFailedEarlier {
                function,
                size: self.core.size_of(slot),
                message,
            });
        }
        let views = self.core.inputs.views(n, &[])?;
        Ok(Staged {
            runner: self,
            n,
            slot,
            views,
        })
    }
}

impl<'r, 'm, const N: usize, S: crate::StaticArgs + 'm, B: Backend, L: NoLive + 'm>
    Staged<'r, 'm, N, S, B, L>
{
    /// The first `n` rows of every static input buffer, in the forward's order: write the
    /// call's inputs here, on the runner's stream, before [`run`](Self::run). Rows not written
    /// hold an earlier call's values.
    pub fn inputs(&self) -> [&B::Tensor; N] {
        std::array::from_fn(|i| &self.views[i])
    }

    /// The staged call's rows.
    pub fn rows(&self) -> usize {
        self.n
    }

    /// The captured size the call replays (its rows after `n` are padded).
    pub fn size(&self) -> usize {
        self.runner.core.size_of(self.slot)
    }

    /// Runs the staged call: the padded rows (`n..size`) are filled with their pad values,
    /// every time (a forward may have written its inputs since the last fill), and the size's
    /// graph is launched on the buffers as they are (no input copy). A size whose capture
    /// failed (with the plan's `OnCaptureError::Eager`) runs the forward eagerly on the staged
    /// rows instead, counted as a fallback. An error if a capture is under way on the device.
    pub fn run(self) -> Result<Output<'r, B>> {
        let Staged {
            runner,
            n,
            slot,
            views,
        } = self;
        // A stream capture begun since the staging would record this launch into a graph that
        // keeps none of the runner's memory.
        B::forbid_during_capture(Seal::new(), runner.dev, "running a staged call")?;
        match runner.core.stats.calls_by_batch.get_mut(n) {
            Some(count) => *count += 1,
            None => *runner.core.stats.calls_over.entry(n).or_insert(0) += 1,
        }
        let ready = runner.core.stats.sizes[slot].capture_error.is_none()
            && runner.core.graphs[slot]
                .as_ref()
                .is_some_and(|g| B::usable(Seal::new(), &runner.core.memory, &g.keep));
        if ready {
            drop(views);
            let size = runner.core.size_of(slot);
            runner.core.inputs.pad_rows(runner.dev, n, size)?;
            return runner.replay_filled(slot, n, &L::NONE);
        }
        let function = runner.core.plan.function;
        let reason = FallbackReason::CaptureFailed;
        runner.core.stats.fallbacks[reason.index()] += 1;
        if !runner.core.warned[reason.index()] {
            runner.core.warned[reason.index()] = true;
            tracing::warn!(
                target: "cudagraph",
                function,
                batch = n,
                "running a staged call eagerly: {reason} (logged once per reason; see Runner::stats)"
            );
        }
        let refs: [&B::Tensor; N] = std::array::from_fn(|i| &views[i]);
        let tensor = (runner.eager)(
            runner.dev,
            refs,
            &runner.core.statics,
            &Islands::direct(&L::NONE),
        )?;
        drop(views);
        B::check_tensor(Seal::new(), runner.dev, function, &tensor)?;
        Ok(Output {
            tensor,
            replayed: false,
            size: None,
            dev: runner.dev,
        })
    }
}
