//! [`FnRunner`]: a [`Runner`] typed as the runner of one annotated function, what the
//! `<fn>_graphs` constructor `#[cuda_graph]` generates returns.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use super::refresh::{RefreshError, RefreshReport};
use super::run::Runner;
use crate::backend::Backend;
use crate::error::Result;
use crate::islands::Islands;

/// The runner of one annotated function: a [`Runner`] whose type also names the function
/// (`F`, a [`FunctionId`](crate::FunctionId)), so that the generated `<fn>_graphs_refresh`
/// takes only that function's runner.
///
/// It derefs to its `Runner`, so everything a runner does is called on it directly
/// (`graphs.run(..)`, `graphs.stats()`), and a helper written on a plain runner takes it with
/// no mention of the identity: `fn call<const N: usize, S>(r: &mut Runner<'_, N, S>)` accepts
/// `&mut graphs`. [`into_untyped`](Self::into_untyped) gives the `Runner` itself (for a struct
/// field of a type one can write), which the generated refresh no longer accepts.
///
/// Only the generated constructor makes one. The identity guards against mistakes (passing one
/// function's runner to another's refresh is a compile error); it is not a seal: through
/// `DerefMut` a runner can be swapped for another's, and no memory safety rests on it
/// ([`Runner::refresh`] takes any forward of the runner's signature).
pub struct FnRunner<'m, F, const N: usize, S, B: Backend, L = ()> {
    runner: Runner<'m, N, S, B, L>,
    function: PhantomData<fn() -> F>,
}

impl<'m, F, const N: usize, S: 'm, B: Backend, L: 'm> FnRunner<'m, F, N, S, B, L> {
    /// Types `runner` as function `F`'s: crate-private (see
    /// [`__private::identify`](crate::__private::identify)).
    pub(crate) fn new(runner: Runner<'m, N, S, B, L>) -> Self {
        Self {
            runner,
            function: PhantomData,
        }
    }

    /// The runner, without the function's identity.
    pub fn into_untyped(self) -> Runner<'m, N, S, B, L> {
        self.runner
    }

    /// [`Runner::refresh`]: every graph rebuilt for `eager`. The refreshed runner is untyped (a
    /// `Runner`): `eager` may be any forward, so it no longer carries this function's identity
    /// (the generated `<fn>_graphs_refresh`, which passes the function's own forward, keeps
    /// it). On error the old runner comes back as it was, typed.
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
        self.runner.refresh(dev, eager).map_err(|e| RefreshError {
            error: e.error,
            runner: Box::new(FnRunner::new(*e.runner)),
        })
    }
}

/// [`Runner::refresh`] of the runner inside `runner`, keeping its identity: what the generated
/// `<fn>_graphs_refresh` calls with the function's own forward (re-exported as
/// `__private::refresh`, the generated code's, not an API: called with another forward it
/// would give that forward's graphs the function's identity).
#[allow(clippy::type_complexity)]
pub fn refresh<'m, 'n, F, const N: usize, S: 'm + 'n, B: Backend, L: 'm + 'n>(
    runner: FnRunner<'m, F, N, S, B, L>,
    dev: &'n B::Device,
    eager: impl Fn(&B::Device, [&B::Tensor; N], &S, &Islands<'n, '_, B, L>) -> Result<B::Tensor> + 'n,
) -> std::result::Result<
    (FnRunner<'n, F, N, S, B, L>, RefreshReport),
    RefreshError<FnRunner<'m, F, N, S, B, L>>,
> {
    match runner.runner.refresh_live(dev, eager) {
        Ok((runner, report)) => Ok((FnRunner::new(runner), report)),
        Err(e) => Err(RefreshError {
            error: e.error,
            runner: Box::new(FnRunner::new(*e.runner)),
        }),
    }
}

impl<'m, F, const N: usize, S, B: Backend, L> Deref for FnRunner<'m, F, N, S, B, L> {
    type Target = Runner<'m, N, S, B, L>;

    fn deref(&self) -> &Runner<'m, N, S, B, L> {
        &self.runner
    }
}

impl<F, const N: usize, S, B: Backend, L> DerefMut for FnRunner<'_, F, N, S, B, L> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.runner
    }
}

impl<F, const N: usize, S, B: Backend, L> std::fmt::Debug for FnRunner<'_, F, N, S, B, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.runner.fmt(f)
    }
}
