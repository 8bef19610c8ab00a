//! The decoder's step over tokens, not sequences: what a continuous-batching server runs.
//!
//! Each row is one token of some sequence: a decode token (the last sampled token of a running
//! sequence) or a token of a prompt chunk. The per-row metadata (position, KV-cache slot,
//! which rows form a prompt tile, which rows want logits) lives in device tensors, so the
//! graph of `n` rows serves every mix of prefill and decode of `n` tokens: no host value of
//! the step reaches a kernel. Build the tables with
//! [`serving::StepTables`](crate::serving::StepTables).

use super::{Llama, Rows, StepLogits, forward_rows};
use cudagraph::ops::{self, StepRows};
use cudagraph::{DType, Error, InputSpec, Islands, Result, Runtime, Tensor, cuda_graph};

impl Llama {
    /// One serving step of `n` tokens, greedy: u32 `[n]`, entry `k` the next token after row
    /// `logit_rows[k]` for `k < step_logit_rows(n)` (each sequence's last row in the step
    /// first, see [`serving::StepTables`](crate::serving::StepTables)), zeros past that; the
    /// entries past the step's sequences are ids nobody reads.
    ///
    /// Inputs: `tokens` u32 `[n]`, `positions` i32 `[n]`, `slots` i32 `[n, 2]` (each row's
    /// KV-cache slot, and 1 for a row that attends alone: a decode token), `tiles` i32
    /// `[n, 2]` (runs of up to [`ops::STEP_TILE_ROWS`] rows of one prompt chunk: first row,
    /// rows) and `logit_rows` u32 `[n]`. The logits themselves:
    /// [`step_logits`](Self::step_logits), the same forward without the sampling.
    ///
    /// Graphed by the token count; padded rows run at position -1 with slot -1 and write
    /// nothing. Sampling runs in the graph, so a replay's only download is the ids.
    #[cuda_graph(
        sizes = [1, 2, 4, 8..=512 step 8],
        pad = [tokens = 0, positions = -1, slots = -1, tiles = 0, logit_rows = 0]
    )]
    pub fn forward_step(
        &self,
        rt: &Runtime,
        tokens: &Tensor,
        positions: &Tensor,
        slots: &Tensor,
        tiles: &Tensor,
        logit_rows: &Tensor,
    ) -> Result<Tensor> {
        let logits = self.step_logits(rt, tokens, positions, slots, tiles, logit_rows)?;
        ops::argmax_rows_padded(rt, &logits, tokens.rows())
    }

    /// [`forward_step`](Self::forward_step) with the attention of every layer in an eager
    /// island (vLLM's piecewise graphs): graphed, each size is `layers + 1` segments.
    #[cuda_graph(
        sizes = [1, 2, 4, 8..=512 step 8],
        pad = [tokens = 0, positions = -1, slots = -1, tiles = 0, logit_rows = 0]
    )]
    #[allow(clippy::too_many_arguments)]
    pub fn forward_step_islands(
        &self,
        rt: &Runtime,
        tokens: &Tensor,
        positions: &Tensor,
        slots: &Tensor,
        tiles: &Tensor,
        logit_rows: &Tensor,
        islands: &Islands,
    ) -> Result<Tensor> {
        let step = self.step_tables(tokens, slots, tiles, logit_rows)?;
        let logits = forward_rows(
            rt,
            &self.parts(),
            (tokens, positions),
            Rows::StepIslands(islands, step),
            &|_, t| Ok(t),
        )?;
        ops::argmax_rows_padded(rt, &logits, tokens.rows())
    }

    /// The logits of a serving step (eager): bf16 `[step_logit_rows(n), vocab]`, row `k` the
    /// logits after row `logit_rows[k]`. Every row's key and value are written before any row
    /// attends; each row attends causally over its slot up to its position, so the rows of
    /// one prompt chunk see each other and the slot's earlier tokens. Inputs as
    /// [`forward_step`](Self::forward_step).
    ///
    /// A dynamic RoPE scaling uses each row's own position + 1 as the sequence's length,
    /// where [`prefill`](Self::prefill) uses the chunk's end for all its rows.
    pub fn step_logits(
        &self,
        rt: &Runtime,
        tokens: &Tensor,
        positions: &Tensor,
        slots: &Tensor,
        tiles: &Tensor,
        logit_rows: &Tensor,
    ) -> Result<Tensor> {
        let step = self.step_tables(tokens, slots, tiles, logit_rows)?;
        forward_rows(
            rt,
            &self.parts(),
            (tokens, positions),
            Rows::Step(step),
            &|_, t| Ok(t),
        )
    }

    /// How many logit rows a step of `n` tokens computes: `min(n, cache_slots)` (a sequence
    /// has a slot, and a step a logit row per sequence at most).
    pub fn step_logit_rows(&self, n: usize) -> usize {
        n.min(self.cfg.cache_slots)
    }

    /// The graph inputs of [`forward_step`](Self::forward_step): tokens, positions, slots,
    /// tiles, logit rows.
    pub fn step_input_specs(&self) -> Result<[InputSpec; 5]> {
        Ok([
            InputSpec::new(DType::U32, &[])?,
            InputSpec::new(DType::I32, &[])?,
            InputSpec::new(DType::I32, &[2])?,
            InputSpec::new(DType::I32, &[2])?,
            InputSpec::new(DType::U32, &[])?,
        ])
    }

    /// Checks the step's tables' shapes against the tokens and bundles them.
    fn step_tables<'a>(
        &self,
        tokens: &Tensor,
        slots: &'a Tensor,
        tiles: &'a Tensor,
        logit_rows: &'a Tensor,
    ) -> Result<StepLogits<'a>> {
        const OP: &str = "Llama::forward_step";
        let n = tokens.rows();
        if tokens.shape() != [n] || logit_rows.shape() != [n] || logit_rows.dtype() != DType::U32 {
            return Err(Error::invalid(
                OP,
                format!(
                    "`tokens` and `logit_rows` must be u32 [n], got {:?} and {:?} {:?}",
                    tokens.shape(),
                    logit_rows.dtype(),
                    logit_rows.shape()
                ),
            ));
        }
        if n == 0 {
            return Err(Error::invalid(OP, "a step needs at least one token"));
        }
        Ok(StepLogits {
            rows: StepRows { slots, tiles },
            logit_rows,
            count: self.step_logit_rows(n),
        })
    }
}
