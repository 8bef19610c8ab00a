//! Tensor-parallel decode: a [`Llama`](super::llama::Llama) sharded over several GPUs, with the
//! NCCL all-reduces captured inside each rank's CUDA graphs (as vLLM and SGLang do).
//!
//! # One thread per GPU, in one process
//!
//! [`run_ranks`] runs one thread per rank in the calling process; each thread owns its rank's
//! [`Runtime`] (device `rank`, its own stream), its shard ([`TpLlama`]) and its runner
//! (`forward_graphs`): graphs belong to one device, so every rank captures its own, for the same
//! sizes. Threads rather than processes because:
//!
//! * the communicators come from one `ncclCommInitAll` call (cudarc's
//!   [`nccl`](cudagraph::cudarc::nccl)), with no unique id to ship between processes and no launcher;
//! * the host weights are generated or loaded once and sliced per rank in shared memory;
//! * results of the ranks (logits, timings) come back as values, so the example and the GPU test
//!   compare tp = 2 with tp = 1 in one program.
//!
//! A [`Runtime`] is `Send` but not `Sync` and a runner is neither, so each thread creates its
//! own; an [`NcclComm`] is `Send` and moves into its rank's thread. A capture is thread-local
//! (`CU_STREAM_CAPTURE_MODE_THREAD_LOCAL`, what NCCL's guide asks of one thread per GPU), so two
//! ranks capture at the same time without disturbing each other, and NCCL's own threads may
//! allocate and map memory meanwhile. NCCL warns that one thread launching the graphs of
//! several GPUs, or of several communicators, can deadlock in `cudaGraphLaunch`: here each
//! thread launches the graphs of one GPU and one communicator.
//!
//! # Or one process per GPU
//!
//! Where each rank must be a process of its own (a launcher like `torchrun`, or a tool that
//! follows processes, such as `compute-sanitizer`, under which one process's kernels run one at
//! a time and an all-reduce would wait forever for its peer on the other GPU), the launcher
//! makes an [`NcclId`], starts one process per rank with its text, and each process calls
//! [`run_rank_process`] (`ncclCommInitRank`) with the same closure it would give `run_ranks`.
//! The GPU suite's tensor-parallel tests run both ways.
//!
//! # Safety: the lockstep contract
//!
//! Every rank must issue the same collectives, with equal element counts and dtypes, in the
//! same order: NCCL trusts each rank's count, so ranks that all-reduce different shapes read
//! and write out of bounds (on both GPUs), and no rank can see it locally. The promise is made
//! where communicators are created ([`NcclComm::init_all`], [`NcclComm::init_rank`], and the
//! entry points here that call them, [`run_ranks`] and [`run_rank_process`], are `unsafe fn`),
//! so that everything run on a communicator ([`all_reduce_sum`], [`TpLlama`], its runner) is
//! safe code. `cudagraph::nccl` explains why the counts are not checked in band
//! (a collective and a host sync per all-reduce, impossible inside a replayed graph) and what a
//! lock-step driver could make safe later.
//!
//! The ranks here keep it by symmetry: they run the same code on shards of equal shapes, so
//! their eager forwards, warm-ups, captures and replays issue the same sequence as long as the
//! caller runs the same batch sizes on every rank, in the same order. An all-reduce recorded
//! under capture does not communicate at record time; it communicates when the graph replays,
//! so both ranks replay their graph of the same size together. [`RankSync::wait`] is a barrier
//! between phases that turns a failure of one rank into an error on the others (instead of a
//! hang at the next barrier). A rank that fails *between* two collectives its peer has already
//! enqueued leaves the peer's GPU waiting, as in any NCCL program: the ranks here fail or
//! succeed together because they are symmetric.
//!
//! # Sharding (Megatron style)
//!
//! * attention: the q heads and the kv heads are split evenly (`q_heads / tp` and
//!   `kv_heads / tp` per rank, both divisible); the q/k/v projection is column-parallel (each
//!   rank holds the rows of its heads of `[q; k; v]`, and of the q/k/v bias), the output
//!   projection row-parallel (each rank holds the columns of its heads) and yields partial
//!   sums, all-reduced (sum, bf16) before the residual add; the output bias is added once (rank
//!   0 holds it, the others hold zeros);
//! * MLP: gate/up column-parallel (`intermediate / tp` rows of each), down row-parallel, then
//!   an all-reduce;
//! * replicated: the embedding, every norm (and the q/k norms), the LM head: every rank
//!   computes the full logits (identical on every rank), which keeps the sampling side
//!   unchanged and costs one `[hidden, vocab]` GEMM per rank;
//! * the KV cache of a rank holds its kv heads only.
//!
//! # Limits
//!
//! * NCCL registers the buffers of captured collectives with the peer GPUs (zero-copy,
//!   `NCCL_GRAPH_REGISTER`, on by default): a peer maps the pages of this rank's graph pool.
//!   [`Runner::release_memory`](cudagraph::Runner::release_memory) and `resume` would map new pages
//!   under the graphs while the peers keep the old ones, so a tensor-parallel runner must not
//!   use them (set `NCCL_GRAPH_REGISTER=0` to turn registration off, at some bandwidth cost).
//! * `refresh` re-records a runner's graphs: call it on every rank, so that the ranks' graphs
//!   keep issuing the same collectives (graphs of one size replay together on every rank).
//!
//! # NVLink multicast stays off
//!
//! NCCL's NVLink SHARP (NVLS) uses multicast objects (`cuMulticastCreate`), which on shared
//! hosts can put the GPUs out of service for everyone. Nothing here calls `cuMulticastCreate`,
//! and [`NcclComm::init_all`] (like every constructor of [`cudagraph::nccl`]) refuses to create
//! communicators unless `NCCL_NVLS_ENABLE=0` is in the environment (NCCL reads it when the
//! communicators are created; the environment is also what children of the process inherit).
//!
//! # The NCCL library
//!
//! cudarc opens NCCL at first use (dynamic loading): nothing here touches it unless
//! communicators are created (`tp > 1`), and a machine without NCCL gets
//! [`Error::MissingLibrary`](cudagraph::Error::MissingLibrary), never a panic. cudarc looks for
//! `libnccl.so` (among other names, but not `libnccl.so.2`): where only `libnccl.so.2` is
//! installed, a `libnccl.so` link to it in a folder on `LD_LIBRARY_PATH` makes it found
//! (`scripts/gpu-run.sh` does that).

//!
//! # Files
//!
//! * the communicators and the all-reduce live at the runtime's FFI edge,
//!   `cudagraph::nccl` (re-exported here);
//! * `ranks.rs`: [`RankSync`], [`Rank`], [`run_ranks`], [`run_rank_process`];
//! * `shard.rs`: [`shard_config`], [`shard_layer`], [`shard_weights`], [`random_weights`];
//! * `model.rs`: [`TpLlama`].
//!
//! [`Runtime`]: cudagraph::Runtime

mod model;
mod ranks;
mod shard;

pub use cudagraph::nccl::{
    NVLS_ENV, NcclComm, NcclId, all_reduce_sum, check_nvls_disabled, nccl_available, nccl_version,
    require_nccl,
};
pub use model::TpLlama;
pub use ranks::{Rank, RankSync, run_rank_process, run_ranks};
pub use shard::{random_weights, shard_config, shard_layer, shard_weights};
