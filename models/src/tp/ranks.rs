//! Rank orchestration: one thread per rank ([`run_ranks`], communicators from one
//! `ncclCommInitAll`) or one process per rank ([`run_rank_process`], `ncclCommInitRank`), and
//! the barrier between the ranks' phases ([`RankSync`]). Both entry points create
//! communicators, so both are `unsafe fn` with the contract of [`NcclComm::init_all`] on the
//! closure they run (see the [module docs](super#safety-the-lockstep-contract)).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use cudagraph::nccl::{NcclComm, NcclId};
use cudagraph::{Error, Result};

///
/// It spins first (then yields, then sleeps), so after a short wait the ranks leave it within
/// about a microsecond of each other: a barrier before a timed replay adds no skew to it.
#[derive(Debug)]
pub struct RankSync {
    world: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    failed: AtomicBool,
    first_failure: Mutex<Option<usize>>,
}

impl RankSync {
    /// A barrier for `world` ranks.
    pub fn new(world: usize) -> Self {
        Self {
            world: world.max(1),
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
            first_failure: Mutex::new(None),
        }
    }

    /// Waits until every rank arrived; an error as soon as any rank failed.
    pub fn wait(&self) -> Result<()> {
        let peer_failed = || Error::invalid("rank sync", "another rank failed; this one stops");
        if self.failed.load(Ordering::Acquire) {
            return Err(peer_failed());
        }
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.world {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::AcqRel);
            return Ok(());
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            if self.failed.load(Ordering::Acquire) {
                return Err(peer_failed());
            }
            // Spin for short waits (a timed replay), yield, then sleep for long ones (another
            // rank uploading its weights or capturing).
            spins = spins.saturating_add(1);
            if spins < 1 << 16 {
                std::hint::spin_loop();
            } else if spins < 1 << 20 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        }
        Ok(())
    }

    /// Marks `rank` as failed: every waiting and later [`wait`](Self::wait) returns an error.
    pub fn fail(&self, rank: usize) {
        let mut first = self.first_failure.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(rank);
        self.failed.store(true, Ordering::Release);
    }

    /// The rank that failed first, if any.
    pub fn first_failure(&self) -> Option<usize> {
        *self.first_failure.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What one rank's thread of [`run_ranks`] receives.
#[derive(Debug)]
pub struct Rank<'g> {
    /// This rank (its device ordinal).
    pub rank: usize,
    /// Number of ranks.
    pub world: usize,
    /// The rank's communicator, on device `rank`. It stays owned by `run_ranks`, which destroys
    /// it after the rank's function returned and, on failure, after the other ranks were told.
    pub comm: &'g NcclComm,
    /// The barrier every rank shares.
    pub sync: &'g RankSync,
}

/// Marks the rank failed when its thread unwinds.
struct FailOnUnwind<'g> {
    sync: &'g RankSync,
    rank: usize,
}

impl Drop for FailOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.sync.fail(self.rank);
        }
    }
}

/// Runs `f` once per rank, rank `r` on device `r`, each in its own thread of this process, with
/// communicators from one `ncclCommInitAll`, and returns the ranks' results in rank order.
///
/// `f` creates its rank's [`Runtime`](cudagraph::Runtime) (`Runtime::new(rank.rank)`), model and
/// runner: they stay in the thread and drop when `f` returns, before the communicator, which the
/// thread destroys last. On error the first rank that failed gives the error (a rank that panicked
/// gives an error carrying the panic's message); the other ranks' next [`RankSync::wait`] fails, so
/// they stop too.
///
/// Errors before any thread starts: `world` is 0, `NCCL_NVLS_ENABLE` is not `0`, fewer than
/// `world` devices, no NCCL.
///
/// # Safety
///
/// The contract of [`NcclComm::init_all`], kept by `f`: every rank issues the same sequence of
/// collectives on its [`Rank::comm`] with equal element counts and dtypes. For a model
/// ([`TpLlama`](super::TpLlama)): every rank builds it from the same configuration, captures
/// the same sizes and runs the same batch sizes in the same order (same-shaped inputs, with
/// [`RankSync::wait`] between phases).
pub unsafe fn run_ranks<T, F>(world: usize, f: F) -> Result<Vec<T>>
where
    T: Send,
    F: Fn(Rank<'_>) -> Result<T> + Sync,
{
    if world == 0 {
        return Err(Error::invalid("run_ranks", "needs at least one rank"));
    }
    let ordinals: Vec<usize> = (0..world).collect();
    // SAFETY: the communicators go only to `f`'s ranks, whose collectives match, as our caller
    // promises.
    let comms = unsafe { NcclComm::init_all(&ordinals) }?;
    let sync = RankSync::new(world);
    let f = &f;
    let sync_ref = &sync;
    let outcomes: Vec<Result<T>> = std::thread::scope(|scope| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|comm| {
                let rank = comm.rank();
                let handle = std::thread::Builder::new()
                    .name(format!("tp-rank-{rank}"))
                    .spawn_scoped(scope, move || {
                        // Declared first, dropped last: the communicator is destroyed after
                        // the failure flag is up (NCCL's destroy waits for the other ranks).
                        let comm = comm;
                        let _guard = FailOnUnwind {
                            sync: sync_ref,
                            rank,
                        };
                        let out = f(Rank {
                            rank,
                            world,
                            comm: &comm,
                            sync: sync_ref,
                        });
                        if out.is_err() {
                            sync_ref.fail(rank);
                        }
                        out
                    });
                (rank, handle)
            })
            .collect();
        handles
            .into_iter()
            .map(|(rank, handle)| match handle {
                Err(e) => {
                    sync_ref.fail(rank);
                    Err(Error::invalid(
                        "run_ranks",
                        format!("could not start the thread of rank {rank}: {e}"),
                    ))
                }
                Ok(handle) => handle.join().unwrap_or_else(|payload| {
                    let message = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(no message)".into());
                    Err(Error::invalid(
                        "run_ranks",
                        format!("rank {rank} panicked: {message}"),
                    ))
                }),
            })
            .collect()
    });
    let first = sync.first_failure();
    let mut results = Vec::with_capacity(world);
    let mut errors: Vec<(usize, Error)> = Vec::new();
    for (rank, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(v) => results.push(v),
            Err(e) => errors.push((rank, e)),
        }
    }
    if errors.is_empty() {
        return Ok(results);
    }
    let pick = errors
        .iter()
        .position(|(rank, _)| Some(*rank) == first)
        .unwrap_or(0);
    let (rank, error) = errors.swap_remove(pick);
    tracing::error!(rank, error = %error, "tensor-parallel rank failed");
    Err(error)
}

/// Runs `f` as rank `rank` of `world` in this process, when each rank has a process of its own
/// (the launcher started `world` processes and gave each the same [`NcclId`]): the
/// communicator comes from [`NcclComm::init_rank`] on device `rank`, and is destroyed after `f`
/// returns (`f` creates and drops its runtime, model and runner, as with [`run_ranks`]).
///
/// The [`Rank::sync`] `f` receives is this process's alone, so its `wait` returns at once: the
/// ranks meet in their collectives. A rank that fails stops its process; its peers then wait in
/// their next collective until the launcher stops them, as with any NCCL program of one process
/// per GPU (`torchrun` likewise kills the other ranks when one exits with an error).
///
/// # Safety
///
/// The contract of [`NcclComm::init_rank`], kept by `f` in every rank's process: every rank
/// issues the same sequence of collectives on its [`Rank::comm`] with equal element counts and
/// dtypes. For a model: every process builds it from the same configuration, captures the same
/// sizes and runs the same batch sizes in the same order.
pub unsafe fn run_rank_process<T>(
    id: &NcclId,
    world: usize,
    rank: usize,
    f: impl FnOnce(Rank<'_>) -> Result<T>,
) -> Result<T> {
    // SAFETY: the communicator goes only to `f`, whose collectives match its peers', as our
    // caller promises for every rank's process.
    let comm = unsafe { NcclComm::init_rank(id, world, rank, rank) }?;
    let sync = RankSync::new(1);
    f(Rank {
        rank,
        world,
        comm: &comm,
        sync: &sync,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_sync_passes_together_and_fails_fast() {
        let sync = RankSync::new(3);
        let passed = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..100 {
                        sync.wait().unwrap();
                    }
                    passed.fetch_add(1, Ordering::Relaxed);
                });
            }
        });
        assert_eq!(passed.load(Ordering::Relaxed), 3);
        let sync = RankSync::new(2);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| sync.wait());
            sync.fail(1);
            assert!(waiter.join().unwrap().is_err());
        });
        assert!(sync.wait().is_err());
        assert_eq!(sync.first_failure(), Some(1));
    }

    #[test]
    fn no_ranks_is_an_error_before_nccl() {
        // SAFETY: zero ranks is refused before any communicator is created.
        assert!(unsafe { run_ranks(0, |_| Ok(())) }.is_err());
    }
}
