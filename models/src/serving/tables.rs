//! A step's pieces (a decode token, a prompt chunk) turned into the inputs of
//! [`Llama::forward_step`](crate::llama::Llama::forward_step): one row per token, with its
//! position, its KV-cache slot, the prompt tiles and the rows whose logits are wanted.

use cudagraph::ops::STEP_TILE_ROWS;
use cudagraph::{Error, Result, Runtime, Tensor};

/// Consecutive tokens of one sequence in a step: a decode token (one token, its logits
/// wanted) or a chunk of a prompt (its last row's logits wanted when the chunk ends the
/// prompt).
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// The sequence's KV-cache slot.
    pub slot: usize,
    /// The position of the first token (the tokens already in the slot).
    pub start: usize,
    /// The token ids, at positions `start..start + tokens.len()`.
    pub tokens: Vec<u32>,
    /// Whether the step computes the logits of the piece's last token.
    pub logits: bool,
}

/// The host tables of one step (see [`Llama::forward_step`](crate::llama::Llama::forward_step)
/// for their meaning); [`upload`](Self::upload) makes the forward's inputs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepTables {
    /// u32 `[n]`.
    pub tokens: Vec<u32>,
    /// i32 `[n]`.
    pub positions: Vec<i32>,
    /// i32 `[n, 2]`: (slot, 1 for a row that attends alone).
    pub slots: Vec<i32>,
    /// i32 `[n, 2]`: (first row, rows) of each prompt tile, then zeros.
    pub tiles: Vec<i32>,
    /// u32 `[n]`: the rows whose logits are wanted, first, in piece order; then zeros.
    pub logit_rows: Vec<u32>,
    /// How many entries of `logit_rows` are wanted.
    pub logit_count: usize,
}

/// The forward's inputs of a step, on the device.
#[derive(Debug)]
pub struct StepTensors {
    /// u32 `[n]`.
    pub tokens: Tensor,
    /// i32 `[n]`.
    pub positions: Tensor,
    /// i32 `[n, 2]`.
    pub slots: Tensor,
    /// i32 `[n, 2]`.
    pub tiles: Tensor,
    /// u32 `[n]`.
    pub logit_rows: Tensor,
}

impl StepTensors {
    /// The five inputs in `forward_step`'s order.
    pub fn inputs(&self) -> [&Tensor; 5] {
        [
            &self.tokens,
            &self.positions,
            &self.slots,
            &self.tiles,
            &self.logit_rows,
        ]
    }
}

impl StepTables {
    /// The tables of `pieces`, in order: a one-token piece attends alone (the decode kernel);
    /// a longer piece is cut into tiles of up to [`STEP_TILE_ROWS`] rows.
    ///
    /// ```
    /// use cudagraph_models::serving::{Piece, StepTables};
    /// let pieces = [
    ///     Piece { slot: 3, start: 40, tokens: vec![7], logits: true },
    ///     Piece { slot: 0, start: 0, tokens: (0..10).collect(), logits: true },
    /// ];
    /// let t = StepTables::build(&pieces).unwrap();
    /// assert_eq!(t.positions, [40, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    /// assert_eq!(&t.slots[..4], [3, 1, 0, 0]); // row 0 alone in slot 3; row 1 in a tile of slot 0
    /// assert_eq!(&t.tiles[..6], [1, 8, 9, 2, 0, 0]); // rows 1..9 and 9..11
    /// assert_eq!(&t.logit_rows[..2], [0, 10]);
    /// ```
    pub fn build(pieces: &[Piece]) -> Result<Self> {
        const OP: &str = "StepTables::build";
        let n: usize = pieces.iter().map(|p| p.tokens.len()).sum();
        let mut t = StepTables {
            tokens: Vec::with_capacity(n),
            positions: Vec::with_capacity(n),
            slots: Vec::with_capacity(2 * n),
            tiles: vec![0; 2 * n],
            logit_rows: vec![0; n],
            logit_count: 0,
        };
        let mut tiles = 0;
        for p in pieces {
            let len = p.tokens.len();
            if len == 0 {
                return Err(Error::invalid(OP, "a piece needs at least one token"));
            }
            let slot = i32::try_from(p.slot)
                .map_err(|_| Error::invalid(OP, format!("slot {} overflows i32", p.slot)))?;
            let first = t.tokens.len();
            let alone = i32::from(len == 1);
            for (i, &token) in p.tokens.iter().enumerate() {
                let pos = p
                    .start
                    .checked_add(i)
                    .and_then(|pos| i32::try_from(pos).ok())
                    .ok_or_else(|| Error::invalid(OP, "a position overflows i32"))?;
                t.tokens.push(token);
                t.positions.push(pos);
                t.slots.extend([slot, alone]);
            }
            if len > 1 {
                for chunk_start in (0..len).step_by(STEP_TILE_ROWS) {
                    let rows = (len - chunk_start).min(STEP_TILE_ROWS);
                    // n < i32::MAX rows: the positions above fit i32, and so do row indices
                    // (a step's rows are at most a token budget, far below).
                    t.tiles[2 * tiles] = to_i32(OP, first + chunk_start)?;
                    t.tiles[2 * tiles + 1] = to_i32(OP, rows)?;
                    tiles += 1;
                }
            }
            if p.logits {
                let last = u32::try_from(first + len - 1)
                    .map_err(|_| Error::invalid(OP, "a row index overflows u32"))?;
                t.logit_rows[t.logit_count] = last;
                t.logit_count += 1;
            }
        }
        Ok(t)
    }

    /// Rows (tokens) of the step.
    pub fn rows(&self) -> usize {
        self.tokens.len()
    }

    /// Uploads the tables.
    pub fn upload(&self, rt: &Runtime) -> Result<StepTensors> {
        let n = self.rows();
        Ok(StepTensors {
            tokens: rt.upload(&self.tokens, &[n])?,
            positions: rt.upload(&self.positions, &[n])?,
            slots: rt.upload(&self.slots, &[n, 2])?,
            tiles: rt.upload(&self.tiles, &[n, 2])?,
            logit_rows: rt.upload(&self.logit_rows, &[n])?,
        })
    }
}

fn to_i32(op: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid(op, format!("{v} overflows i32")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_rows_attend_alone_and_chunks_are_tiled() {
        let pieces = [
            Piece {
                slot: 1,
                start: 5,
                tokens: vec![9],
                logits: true,
            },
            Piece {
                slot: 2,
                start: 0,
                tokens: (0..17).collect(),
                logits: false,
            },
            Piece {
                slot: 4,
                start: 30,
                tokens: vec![1, 2],
                logits: true,
            },
        ];
        let t = StepTables::build(&pieces).unwrap();
        assert_eq!(t.rows(), 20);
        assert_eq!(t.slots[0..2], [1, 1]);
        assert!(t.slots[2..36].chunks(2).all(|s| s == [2, 0]));
        assert_eq!(t.slots[36..40], [4, 0, 4, 0]);
        // 17 rows: tiles of 8, 8, 1; then the 2-row chunk.
        assert_eq!(t.tiles[..8], [1, 8, 9, 8, 17, 1, 18, 2]);
        assert!(t.tiles[8..].iter().all(|&v| v == 0));
        assert_eq!(t.logit_count, 2);
        assert_eq!(t.logit_rows[..2], [0, 19]);
        assert_eq!(t.positions[18..], [30, 31]);
    }

    #[test]
    fn empty_pieces_are_errors() {
        let bad = [Piece {
            slot: 0,
            start: 0,
            tokens: vec![],
            logits: true,
        }];
        assert!(StepTables::build(&bad).is_err());
        let huge = [Piece {
            slot: usize::MAX,
            start: 0,
            tokens: vec![1],
            logits: true,
        }];
        assert!(StepTables::build(&huge).is_err());
    }
}

#[cfg(test)]
mod trace_tests {
    //! Every step of a whole trace, scheduled and turned into tables, against the invariants
    //! the kernels rely on.
    use super::*;
    use crate::serving::scheduler::{Scheduler, SchedulerConfig};
    use crate::serving::trace::{TraceConfig, chat_trace};

    /// The tables of one step against its pieces: each row's slot and position; every row of
    /// a multi-token piece covered by exactly one tile of at most `STEP_TILE_ROWS` rows of its
    /// own slot, every one-token row alone; the logit rows the pieces' last rows, in order.
    fn check(pieces: &[Piece], t: &StepTables) {
        let n = t.rows();
        assert_eq!(t.positions.len(), n);
        assert_eq!(
            (t.slots.len(), t.tiles.len(), t.logit_rows.len()),
            (2 * n, 2 * n, n)
        );
        let mut covered = vec![0u32; n];
        for tile in t.tiles.chunks(2).take_while(|tile| tile[1] > 0) {
            let (first, rows) = (tile[0] as usize, tile[1] as usize);
            assert!(rows <= STEP_TILE_ROWS && first + rows <= n, "tile {tile:?}");
            let slot = t.slots[2 * first];
            for (r, count) in covered.iter_mut().enumerate().skip(first).take(rows) {
                *count += 1;
                assert_eq!(t.slots[2 * r], slot, "a tile spans one slot");
                assert_eq!(t.slots[2 * r + 1], 0, "a tiled row is not alone");
            }
        }
        let mut row = 0;
        let mut logits = Vec::new();
        for p in pieces {
            for (i, _) in p.tokens.iter().enumerate() {
                assert_eq!(t.slots[2 * row], p.slot as i32);
                assert_eq!(t.positions[row], (p.start + i) as i32);
                let alone = t.slots[2 * row + 1] == 1;
                assert_eq!(alone, p.tokens.len() == 1);
                assert_eq!(
                    covered[row],
                    u32::from(!alone),
                    "row {row}: covered once or alone"
                );
                row += 1;
            }
            if p.logits {
                logits.push((row - 1) as u32);
            }
        }
        assert_eq!(t.logit_count, logits.len());
        assert_eq!(&t.logit_rows[..logits.len()], logits.as_slice());
    }

    #[test]
    fn every_step_of_a_trace_has_consistent_tables() {
        let trace = chat_trace(&TraceConfig {
            requests: 48,
            prompt: (16, 700),
            output: (4, 60),
            ..TraceConfig::default()
        })
        .unwrap();
        let cfg = SchedulerConfig {
            token_budget: 256,
            slots: 12,
            slot_positions: 760,
        };
        let mut s = Scheduler::new(cfg, &trace).unwrap();
        let (mut now, mut steps, mut mixed) = (0.0, 0, 0);
        while !s.done() {
            if s.idle() {
                now = s.next_arrival_s().unwrap();
            }
            let plan = s.plan(now);
            let t = StepTables::build(&plan.pieces).unwrap();
            check(&plan.pieces, &t);
            assert!(t.rows() <= 256);
            // A logit row per sequence at most, within a step of the model's logit rows
            // (min(rows, slots)).
            assert!(t.logit_count <= t.rows().min(12));
            mixed += usize::from(
                !plan.is_pure_decode() && plan.pieces.iter().any(|p| p.tokens.len() == 1),
            );
            let ids = vec![1; t.logit_count];
            s.complete(&plan, &ids, now).unwrap();
            steps += 1;
            now += 0.005;
            assert!(steps < 100_000);
        }
        assert!(mixed > 0, "some steps mix decode tokens with prompt chunks");
    }
}
