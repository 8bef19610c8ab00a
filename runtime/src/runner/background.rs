//! Background capture (`capture = background`, [`GraphPlan::with_background_capture`]): the
//! runner serves at once, eagerly, and captures its graphs between calls: after each call
//! whose size had none (that size: the order of traffic), and in idle time through
//! [`Runner::capture_pending`] (largest first). Captures run on the caller's thread, never
//! while a forward runs, so eager calls and captures never share the pool, its chunks or the
//! freeze scope at the same time.
//!
//! [`GraphPlan::with_background_capture`]: crate::GraphPlan::with_background_capture

use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::seal::Seal;

use super::run::Runner;

impl<'m, const N: usize, S, B: Backend, L> Runner<'m, N, S, B, L> {
    /// Graphs not captured yet and not failed: what background capture still has to do.
    pub fn pending_captures(&self) -> usize {
        (0..self.core.graphs.len())
            .filter(|&g| self.is_pending(g))
            .count()
    }

    /// Captures pending graphs (background capture, or a lazy plan's sizes not used yet),
    /// largest first, until none is left or `budget` has passed (checked before each capture,
    /// so one capture may run past it); returns how many were captured. A serving loop calls
    /// it when its queue is empty. A failed capture is recorded in the stats and leaves its
    /// size eager; it is not returned.
    ///
    /// Errors: the runner is released, or a capture is under way on the device.
    pub fn capture_pending(&mut self, budget: Duration) -> Result<usize> {
        let function = self.core.plan.function;
        if self.core.released {
            return Err(Error::Released { function });
        }
        B::forbid_during_capture(Seal::new(), self.dev, "capturing pending graphs")?;
        let started = Instant::now();
        let mut captured = 0;
        // Largest first: the last graph of the last key combination holds every bucket at its
        // largest, as an init capture orders them.
        for g in (0..self.core.graphs.len()).rev() {
            if started.elapsed() >= budget {
                break;
            }
            if self.is_pending(g) && self.capture_in_background(g) {
                captured += 1;
            }
        }
        Ok(captured)
    }

    /// Whether graph `g` is still to be captured.
    fn is_pending(&self, g: usize) -> bool {
        self.core.graphs[g].is_none() && self.core.stats.sizes[g].capture_error.is_none()
    }

    /// Captures graph `g` between calls (the largest graph first, if it is still pending: in
    /// pool mode the first capture sizes the pool, and a smaller first one would leave every
    /// larger size a chunk of its own); a failure is recorded (the size stays eager) and
    /// warned about, never returned. Returns whether `g` is captured now.
    pub(super) fn capture_in_background(&mut self, g: usize) -> bool {
        if !self.is_pending(g) || self.core.debug_eager {
            return false;
        }
        let largest = self.core.graphs.len() - 1;
        if g != largest && self.is_pending(largest) {
            self.capture_one(largest);
        }
        self.capture_one(g)
    }

    /// Captures graph `g`; a failure is recorded (by `capture_or_mark`, under either
    /// `OnCaptureError`) and warned about, never returned. Returns whether `g` is captured.
    fn capture_one(&mut self, g: usize) -> bool {
        if let Err(e) = self.capture_after_build(g) {
            tracing::warn!(
                target: "cudagraph",
                "{}: background capture of {} failed: {e}; it runs eagerly",
                self.core.plan.function,
                self.graph_label(g)
            );
        }
        self.core.graphs[g].is_some()
    }
}
