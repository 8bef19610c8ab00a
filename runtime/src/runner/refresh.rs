//! [`Runner::refresh`]: every captured graph rebuilt for a new forward (new weights, same
//! shapes), updated in place where the driver accepts.

use std::time::Instant;

use std::cell::RefCell;

use super::run::{EagerFn, Runner, SizeGraph, capture_body};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ffi::ExecGraph;
use crate::islands::{IslandRecord, Islands};
use crate::policy::Warmup;
use crate::seal::Seal;

impl<'m, const N: usize, S: 'm, B: Backend, L: 'm> Runner<'m, N, S, B, L> {
    /// Rebuilds every captured graph for a new eager function, typically the same model's
    /// forward after its weights moved (a new checkpoint of the same shapes in new buffers): each
    /// size is re-recorded and its executable graph updated in place with `cuGraphExecUpdate`,
    /// or re-instantiated where the driver refuses the update; a size whose new forward needs
    /// more pool memory is warmed up and moved to a larger chunk, and a size with islands is
    /// captured anew (its segments and islands re-recorded). Much cheaper than a new capture,
    /// which is mostly instantiation. The old runner is consumed, so nothing can replay graphs
    /// that still point at the old weights; the new one borrows what `eager` borrows.
    ///
    /// `dev` must be the device (runtime) the runner was captured on. On error the old runner
    /// comes back in the [`RefreshError`], usable with its old forward.
    #[allow(clippy::type_complexity)]
    pub fn refresh<'n>(
        self,
        dev: &'n B::Device,
        eager: impl Fn(&B::Device, [&B::Tensor; N], &S) -> Result<B::Tensor> + 'n,
    ) -> std::result::Result<(Runner<'n, N, S, B, L>, RefreshReport), RefreshError<Self>>
    where
        S: 'n,
        L: 'n,
    {
        self.refresh_live(
            dev,
            move |dev, inputs, statics, _: &Islands<'n, '_, B, L>| eager(dev, inputs, statics),
        )
    }

    /// [`refresh`](Self::refresh) with a forward that takes [`Islands`] (what the generated
    /// `<fn>_graphs_refresh` passes).
    #[allow(clippy::type_complexity)]
    pub fn refresh_live<'n>(
        self,
        dev: &'n B::Device,
        eager: impl Fn(&B::Device, [&B::Tensor; N], &S, &Islands<'n, '_, B, L>) -> Result<B::Tensor>
        + 'n,
    ) -> std::result::Result<(Runner<'n, N, S, B, L>, RefreshReport), RefreshError<Self>>
    where
        S: 'n,
        L: 'n,
    {
        let function = self.core.plan.function;
        if !std::sync::Arc::ptr_eq(
            &B::stream(Seal::new(), dev),
            &B::stream(Seal::new(), self.dev),
        ) {
            return Err(RefreshError {
                error: Error::invalid(
                    function,
                    "refresh needs the runtime the graphs were captured on",
                ),
                runner: Box::new(self),
            });
        }
        if self.core.released {
            return Err(RefreshError {
                error: Error::Released { function },
                runner: Box::new(self),
            });
        }
        if let Err(error) = B::forbid_during_capture(Seal::new(), dev, "a refresh") {
            return Err(RefreshError {
                error,
                runner: Box::new(self),
            });
        }
        let started = Instant::now();
        let mut old = self;
        let eager: EagerFn<'n, N, S, B, L> = Box::new(eager);
        let mut report = RefreshReport::default();
        // Graphs (and their islands) rebuilt for `eager`, by slot; moved into the new runner
        // once all succeeded.
        let mut rebuilt: Vec<Option<SizeGraph<B>>> = old.core.graphs.iter().map(|_| None).collect();
        let mut islands: Vec<Vec<IslandRecord<'n, B, L>>> =
            old.core.graphs.iter().map(|_| Vec::new()).collect();
        let mut failure = None;
        if let Err(error) = old.core.inputs.fill_pads(dev) {
            failure = Some(error);
        }
        for slot in (0..old.core.graphs.len()).rev() {
            if failure.is_some() {
                break;
            }
            let Some(graph) = old.core.graphs[slot].take() else {
                continue;
            };
            let done = if graph.segments.is_empty() {
                refresh_slot(&mut old, dev, &eager, graph, slot)
                    .map(|(g, in_place)| (g, in_place, Vec::new()))
            } else {
                recapture_slot(&mut old, dev, &eager, graph, slot)
                    .map(|(g, records)| (g, false, records))
            };
            match done {
                Ok((graph, in_place, records)) => {
                    let s = &mut old.core.stats.sizes[slot];
                    s.segment_nodes = std::iter::once(&graph.exec)
                        .chain(&graph.segments)
                        .map(ExecGraph::node_count)
                        .collect();
                    s.nodes = s.segment_nodes.iter().sum();
                    s.segments = s.segment_nodes.len();
                    rebuilt[slot] = Some(graph);
                    islands[slot] = records;
                    if in_place {
                        report.updated_in_place += 1;
                    } else {
                        report.reinstantiated += 1;
                    }
                }
                Err((graph, error)) => {
                    old.core.stats.sizes[slot].captured = graph.is_some();
                    old.core.graphs[slot] = graph;
                    failure = Some(error);
                }
            }
        }
        // Graphs whose memory the backend withdrew (a tensor escaped a capture there) are gone
        // from both sets.
        for (slot, graph) in rebuilt.iter_mut().enumerate() {
            if graph
                .as_ref()
                .is_some_and(|g| !B::usable(Seal::new(), &old.core.memory, &g.keep))
            {
                *graph = None;
                old.core.stats.sizes[slot].captured = false;
            }
        }
        old.drop_unusable();
        if let Some(error) = failure {
            // Sizes already rebuilt point at the new model: dropped, captured again on use.
            for (slot, graph) in rebuilt.iter_mut().enumerate() {
                if graph.take().is_some() {
                    old.core.stats.sizes[slot].captured = false;
                    old.islands[slot].clear();
                }
            }
            old.core.stats.pool_bytes = B::memory_bytes(Seal::new(), &old.core.memory);
            return Err(RefreshError {
                error,
                runner: Box::new(old),
            });
        }
        report.time = started.elapsed();
        let Runner { mut core, .. } = old;
        for (slot, graph) in rebuilt.iter().enumerate() {
            if graph.is_none() {
                islands[slot].clear();
            }
        }
        core.graphs = rebuilt;
        core.released = false;
        core.stats.pool_bytes = B::memory_bytes(Seal::new(), &core.memory);
        core.stats.island_buffer_bytes = core.bank.borrow().bytes();
        Ok((
            Runner {
                dev,
                eager,
                islands,
                core,
            },
            report,
        ))
    }
}

/// Re-records size index `slot` of `runner` with `eager` (see [`Runner::refresh`]). On error
/// the graph comes back unchanged, with the error, unless its executable was already updated to
/// the new forward (then `None`: it can't go back to the old runner).
#[allow(clippy::type_complexity, clippy::result_large_err)]
fn refresh_slot<'m, 'n, const N: usize, S: 'm, B: Backend, L: 'm>(
    runner: &mut Runner<'m, N, S, B, L>,
    dev: &B::Device,
    eager: &EagerFn<'n, N, S, B, L>,
    mut graph: SizeGraph<B>,
    slot: usize,
) -> std::result::Result<(SizeGraph<B>, bool), (Option<SizeGraph<B>>, Error)> {
    let request = runner.request(slot, Warmup::IfNeeded);
    let views = match runner.core.views_for(slot) {
        Ok(views) => views,
        Err(e) => return Err((Some(graph), e)),
    };
    let keyed = runner.core.statics_for(slot);
    let (statics, live, bank) = (
        keyed.as_ref().unwrap_or(&runner.core.statics),
        &runner.core.live,
        &runner.core.bank,
    );
    // A re-record can't cut (its segments cut nothing): islands of the new forward here are an
    // error, which `capture_body` reports.
    let islands = RefCell::new(Vec::new());
    let mut body = |dev: &B::Device, segments: Option<&dyn crate::backend::Segments>| {
        let refs: [&B::Tensor; N] = std::array::from_fn(|i| &views[i]);
        capture_body(dev, refs, statics, live, bank, eager, segments, &islands)
    };
    let done = B::rerecord(
        Seal::new(),
        dev,
        &mut runner.core.memory,
        &graph.keep,
        &mut graph.exec,
        request,
        &mut body,
    );
    match done {
        Ok(done) => {
            graph.keep = done.keep;
            graph.output = done.output;
            Ok((graph, done.in_place))
        }
        Err((e, changed)) => Err((if changed { None } else { Some(graph) }, e)),
    }
}

/// Captures size index `slot` of `runner` anew with `eager` (a size with islands, whose
/// segments a re-record can't update one by one). On error the old graph comes back unchanged.
#[allow(clippy::type_complexity, clippy::result_large_err)]
fn recapture_slot<'m, 'n, const N: usize, S: 'm, B: Backend, L: 'm>(
    runner: &mut Runner<'m, N, S, B, L>,
    dev: &B::Device,
    eager: &EagerFn<'n, N, S, B, L>,
    graph: SizeGraph<B>,
    slot: usize,
) -> std::result::Result<(SizeGraph<B>, Vec<IslandRecord<'n, B, L>>), (Option<SizeGraph<B>>, Error)>
{
    let request = runner.request(slot, Warmup::Always);
    let views = match runner.core.views_for(slot) {
        Ok(views) => views,
        Err(e) => return Err((Some(graph), e)),
    };
    let keyed = runner.core.statics_for(slot);
    let (statics, live, bank) = (
        keyed.as_ref().unwrap_or(&runner.core.statics),
        &runner.core.live,
        &runner.core.bank,
    );
    let islands = RefCell::new(Vec::new());
    let mut body = |dev: &B::Device, segments: Option<&dyn crate::backend::Segments>| {
        let refs: [&B::Tensor; N] = std::array::from_fn(|i| &views[i]);
        capture_body(dev, refs, statics, live, bank, eager, segments, &islands)
    };
    let captured = B::capture(
        Seal::new(),
        dev,
        &mut runner.core.memory,
        request,
        &mut body,
    );
    drop(views);
    match captured {
        Ok(c) => {
            let records = islands.into_inner();
            if records.len() != c.segments.len() {
                return Err((
                    Some(graph),
                    Error::invalid("refresh", "the capture's islands and segments disagree"),
                ));
            }
            Ok((
                SizeGraph {
                    exec: c.exec,
                    segments: c.segments,
                    keep: c.keep,
                    output: c.output,
                },
                records,
            ))
        }
        Err(e) => Err((Some(graph), e)),
    }
}

/// What [`Runner::refresh`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RefreshReport {
    /// Graphs whose executable the driver updated in place (`cuGraphExecUpdate`).
    pub updated_in_place: usize,
    /// Graphs re-instantiated because the driver refused the update.
    pub reinstantiated: usize,
    /// Wall time of the whole refresh.
    pub time: std::time::Duration,
}

/// A failed refresh ([`Runner::refresh`], [`FnRunner::refresh`](crate::FnRunner::refresh), the generated
/// `<fn>_graphs_refresh`): the error, and the runner `R` it was given, still usable with its
/// old forward. Sizes the refresh had already rebuilt for the new forward are dropped from it
/// (they pointed at the new model) and are captured again, with the old forward, on their next
/// use.
pub struct RefreshError<R> {
    /// Why the refresh failed.
    pub error: Error,
    /// The runner, as described above (boxed: a runner is large).
    pub runner: Box<R>,
}

impl<R> std::fmt::Debug for RefreshError<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<R> std::fmt::Display for RefreshError<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "refresh failed (the old runner is returned): {}",
            self.error
        )
    }
}

impl<R> std::error::Error for RefreshError<R> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl<R> From<RefreshError<R>> for Error {
    /// The error alone (the returned runner is dropped).
    fn from(e: RefreshError<R>) -> Error {
        e.error
    }
}
