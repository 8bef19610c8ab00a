//! The sharded model: [`TpLlama`], one rank's shard of a Llama-family decoder, whose forward
//! all-reduces the row-parallel projections' partial sums.

use crate::llama::{DecodeParts, LlamaConfig, LlamaLayer, decode_step};
use crate::weights::{HostTensor, LlamaWeights};
use cudagraph::nccl::{NcclComm, all_reduce_sum};
use cudagraph::{DType, Error, Result, Runtime, Tensor, cuda_graph};

use super::ranks::Rank;
use super::shard::{shard_config, shard_layer};

/// One rank of a tensor-parallel Llama-family decoder: its shard of the weights, its part of the
/// KV cache, and the rank's communicator (borrowed: the graphs that record its all-reduces, which
/// borrow the model, are gone before it is destroyed). Built in the rank's thread (see
/// [`run_ranks`](super::run_ranks)).
///
/// Safe to use: its communicator comes from code that promised the lockstep contract
/// ([`run_ranks`](super::run_ranks), [`run_rank_process`](super::run_rank_process)), and every
/// collective it issues (the connecting all-reduces of [`from_weights`](Self::from_weights), two
/// per layer in [`forward`](Self::forward)) has `[n, hidden]` elements for a batch of `n`: ranks
/// that run the same batch sizes in the same order issue matching collectives.
#[derive(Debug)]
pub struct TpLlama<'c> {
    cfg: LlamaConfig,
    local: LlamaConfig,
    embed: Tensor,
    layers: Vec<LlamaLayer>,
    final_norm: Tensor,
    lm_head: Option<Tensor>,
    comm: &'c NcclComm,
}

impl<'c> TpLlama<'c> {
    /// Uploads `rank`'s shard of the full-model `weights` (checked against `cfg`; sliced on the
    /// host layer by layer) to `rt`'s device, which must be the rank's communicator's, and
    /// allocates a zeroed KV cache of `[cache_slots, cache_tokens, kv_heads / tp, head_dim]` per
    /// layer for keys and for values.
    ///
    /// A collective: every rank calls it at the same time. After the upload it waits for the other
    /// ranks ([`RankSync::wait`](super::RankSync::wait): an error if one failed), then runs one
    /// eager all-reduce of every captured batch size (`[n, hidden]`, zeros) so that NCCL sets up
    /// the connections of every algorithm and protocol it will pick (it creates them at first use,
    /// by default) before a capture records its collectives.
    pub fn from_weights(
        rt: &Runtime,
        cfg: LlamaConfig,
        weights: &LlamaWeights,
        rank: &Rank<'c>,
    ) -> Result<Self> {
        let comm = rank.comm;
        let (rank_id, world) = (comm.rank(), comm.world_size());
        if comm.ordinal() != rt.ordinal() {
            return Err(Error::invalid(
                "TpLlama",
                format!(
                    "the communicator of rank {rank_id} is on device {}, the runtime on device {}",
                    comm.ordinal(),
                    rt.ordinal()
                ),
            ));
        }
        let local = shard_config(&cfg, world)?;
        weights.check(&cfg)?;
        let up = |t: &HostTensor| rt.upload(&t.data, &t.dims);
        let up_opt = |t: &Option<HostTensor>| t.as_ref().map(up).transpose();
        let cache = local.kv_cache_shape();
        let mut layers = Vec::with_capacity(cfg.layers);
        for full in &weights.layers {
            let l = shard_layer(&cfg, full, rank_id, world)?;
            layers.push(LlamaLayer::upload(rt, &l, cache)?);
        }
        let model = Self {
            embed: up(&weights.embed)?,
            final_norm: up(&weights.final_norm)?,
            lm_head: up_opt(&weights.lm_head)?,
            layers,
            cfg,
            local,
            comm,
        };
        rt.synchronize()?;
        rank.sync.wait()?;
        model.connect(rt)?;
        Ok(model)
    }

    /// One eager all-reduce of `[n, hidden]` zeros for every batch size `forward` captures, then
    /// a synchronize (see [`from_weights`](Self::from_weights)).
    fn connect(&self, rt: &Runtime) -> Result<()> {
        let sizes = [1, 2, 4].into_iter().chain((8..=256).step_by(8));
        let zeros = rt.zeros(&[256, self.cfg.hidden], DType::BF16)?;
        for n in sizes {
            let rows = zeros.narrow_rows(0, n)?;
            drop(all_reduce_sum(rt, self.comm, &rows)?);
        }
        rt.synchronize()
    }

    /// The full model's shapes.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// This rank's shapes ([`shard_config`]).
    pub fn local_config(&self) -> &LlamaConfig {
        &self.local
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    /// One decode step of this rank, as [`Llama::forward`](crate::llama::Llama::forward):
    /// the logits (`[n, vocab]` bf16, the same on every rank) of the next token of `n` sequences.
    /// Per layer it launches the single-GPU forward's kernels on this rank's shard plus two
    /// all-reduces (after the output projection and after the down projection), which the graphs
    /// capture. Every rank must call it at the same time with the same inputs.
    ///
    /// Padded rows and warm-ups run with position `-1` (`pad = [positions = -1]`): the
    /// KV-write and attention kernels skip them, so only the `n` real rows write the cache.
    #[cuda_graph(sizes = [1, 2, 4, 8..=256 step 8], pad = [positions = -1])]
    pub fn forward(&self, rt: &Runtime, tokens: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let parts = DecodeParts {
            cfg: &self.local,
            embed: &self.embed,
            layers: &self.layers,
            final_norm: &self.final_norm,
            lm_head: self.lm_head.as_ref(),
        };
        let comm = self.comm;
        decode_step(rt, &parts, tokens, positions, &|rt, partial| {
            all_reduce_sum(rt, comm, &partial)
        })
    }
}
