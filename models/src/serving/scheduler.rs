//! Continuous batching: which tokens go into the next step, and what a step's sampled ids do.
//!
//! Each step has a token budget. Every running sequence that is decoding puts its last token
//! in first; the rest of the budget goes to prompt chunks: sequences whose prompt is partly in
//! their slot, then waiting requests (in arrival order) while a KV-cache slot is free. A
//! sequence takes its slot when it starts and frees it when it has generated its output.

use std::collections::VecDeque;

use cudagraph::{Error, Result};

use super::tables::Piece;
use super::trace::Request;

/// What the scheduler may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// The most tokens in one step.
    pub token_budget: usize,
    /// KV-cache slots (sequences running at once).
    pub slots: usize,
    /// Positions per slot: a request needs `prompt + output - 1` of them.
    pub slot_positions: usize,
}

/// A running sequence.
#[derive(Debug, Clone)]
struct Running {
    /// Index of its request in the trace.
    request: usize,
    slot: usize,
    /// Prompt tokens already in the slot.
    prefilled: usize,
    /// Tokens generated so far.
    generated: Vec<u32>,
    /// When each generated token came (seconds, the run's clock).
    token_times: Vec<f64>,
}

/// One finished request's timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// Index of the request in the trace.
    pub request: usize,
    /// Its arrival (seconds).
    pub arrival_s: f64,
    /// When each output token came (seconds).
    pub token_times: Vec<f64>,
    /// The generated ids.
    pub tokens: Vec<u32>,
}

/// The next step: its pieces, and which running sequence each belongs to.
#[derive(Debug, Clone, Default)]
pub struct StepPlan {
    /// The pieces, decode tokens first.
    pub pieces: Vec<Piece>,
    /// Index into the running sequences of each piece.
    owners: Vec<usize>,
    /// Rows of prompt tokens (the rest are decode tokens).
    pub prefill_tokens: usize,
}

impl StepPlan {
    /// Tokens (rows) of the step.
    pub fn tokens(&self) -> usize {
        self.pieces.iter().map(|p| p.tokens.len()).sum()
    }

    /// Whether every piece is a decode token (no prompt chunk).
    pub fn is_pure_decode(&self) -> bool {
        self.prefill_tokens == 0
    }
}

/// The scheduler's state over one run of a trace.
#[derive(Debug)]
pub struct Scheduler<'t> {
    cfg: SchedulerConfig,
    trace: &'t [Request],
    /// The next request of the trace not yet arrived.
    next_arrival: usize,
    waiting: VecDeque<usize>,
    running: Vec<Running>,
    free_slots: Vec<usize>,
    finished: Vec<Finished>,
}

impl<'t> Scheduler<'t> {
    /// A scheduler over `trace` (sorted by arrival). Errors when a request can never run: its
    /// prompt and output need more positions than a slot has.
    pub fn new(cfg: SchedulerConfig, trace: &'t [Request]) -> Result<Self> {
        const OP: &str = "Scheduler::new";
        if cfg.token_budget == 0 || cfg.slots == 0 {
            return Err(Error::invalid(
                OP,
                "the token budget and the slots must be >= 1",
            ));
        }
        // A request is built by hand as well as by `chat_trace`: one the loop can't run is an
        // error here, not a panic in `plan`.
        if let Some(r) = trace.iter().find(|r| r.arrival_s.is_nan()) {
            return Err(Error::invalid(
                OP,
                format!("request {} arrives at NaN seconds", r.id),
            ));
        }
        if let Some(r) = trace
            .iter()
            .find(|r| r.prompt.is_empty() || r.output_len == 0)
        {
            return Err(Error::invalid(
                OP,
                format!(
                    "request {} has a prompt of {} tokens and an output of {}: both must be >= 1",
                    r.id,
                    r.prompt.len(),
                    r.output_len
                ),
            ));
        }
        if let Some(r) = trace
            .iter()
            .find(|r| r.max_positions() > cfg.slot_positions)
        {
            return Err(Error::invalid(
                OP,
                format!(
                    "request {} needs {} positions (prompt {} + output {} - 1), a slot has {}",
                    r.id,
                    r.max_positions(),
                    r.prompt.len(),
                    r.output_len,
                    cfg.slot_positions
                ),
            ));
        }
        if trace.windows(2).any(|w| w[0].arrival_s > w[1].arrival_s) {
            return Err(Error::invalid(OP, "the trace must be sorted by arrival"));
        }
        Ok(Self {
            cfg,
            trace,
            next_arrival: 0,
            waiting: VecDeque::new(),
            running: Vec::new(),
            free_slots: (0..cfg.slots).rev().collect(),
            finished: Vec::new(),
        })
    }

    /// Whether every request has finished.
    pub fn done(&self) -> bool {
        self.finished.len() == self.trace.len()
    }

    /// Whether nothing can run before the next arrival (nothing running or waiting).
    pub fn idle(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    /// When the next request arrives, if one is still to come.
    pub fn next_arrival_s(&self) -> Option<f64> {
        self.trace.get(self.next_arrival).map(|r| r.arrival_s)
    }

    /// The finished requests so far.
    pub fn finished(&self) -> &[Finished] {
        &self.finished
    }

    /// Plans the step at time `now`: admits the arrivals, then fills the budget (decodes, then
    /// prompt chunks).
    pub fn plan(&mut self, now: f64) -> StepPlan {
        while let Some(r) = self.trace.get(self.next_arrival) {
            if r.arrival_s > now {
                break;
            }
            self.waiting.push_back(self.next_arrival);
            self.next_arrival += 1;
        }
        let mut plan = StepPlan::default();
        let mut budget = self.cfg.token_budget;
        for (i, s) in self.running.iter().enumerate() {
            let prompt = &self.trace[s.request].prompt;
            if budget == 0 {
                break;
            }
            if s.prefilled == prompt.len() {
                let last = *s.generated.last().expect("a decoding sequence has a token");
                plan.pieces.push(Piece {
                    slot: s.slot,
                    start: prompt.len() + s.generated.len() - 1,
                    tokens: vec![last],
                    logits: true,
                });
                plan.owners.push(i);
                budget -= 1;
            }
        }
        for (i, s) in self.running.iter().enumerate() {
            let prompt = &self.trace[s.request].prompt;
            if budget == 0 {
                break;
            }
            if s.prefilled < prompt.len() {
                let take = (prompt.len() - s.prefilled).min(budget);
                plan.pieces.push(chunk(s.slot, prompt, s.prefilled, take));
                plan.owners.push(i);
                plan.prefill_tokens += take;
                budget -= take;
            }
        }
        while budget > 0 && !self.waiting.is_empty() {
            let Some(slot) = self.free_slots.pop() else {
                break;
            };
            let request = self.waiting.pop_front().expect("not empty");
            let prompt = &self.trace[request].prompt;
            let take = prompt.len().min(budget);
            plan.pieces.push(chunk(slot, prompt, 0, take));
            plan.owners.push(self.running.len());
            plan.prefill_tokens += take;
            budget -= take;
            self.running.push(Running {
                request,
                slot,
                prefilled: 0,
                generated: Vec::new(),
                token_times: Vec::new(),
            });
        }
        plan
    }

    /// Applies a step's sampled ids (`ids[k]`: the next token of the `k`-th piece that wanted
    /// logits) at time `now`: prompts advance, sequences take their tokens, and the finished
    /// ones free their slots.
    pub fn complete(&mut self, plan: &StepPlan, ids: &[u32], now: f64) -> Result<()> {
        let wanted = plan.pieces.iter().filter(|p| p.logits).count();
        if ids.len() < wanted {
            return Err(Error::invalid(
                "Scheduler::complete",
                format!("{wanted} pieces wanted a token, {} ids came", ids.len()),
            ));
        }
        let mut next = ids.iter();
        for (piece, &owner) in plan.pieces.iter().zip(&plan.owners) {
            let s = &mut self.running[owner];
            let prompt_len = self.trace[s.request].prompt.len();
            if s.prefilled < prompt_len {
                s.prefilled += piece.tokens.len();
            }
            if piece.logits {
                let id = *next.next().expect("counted above");
                s.generated.push(id);
                s.token_times.push(now);
            }
        }
        // Finished sequences leave (their slots come free for the next step's admissions).
        let trace = self.trace;
        let mut i = 0;
        while i < self.running.len() {
            let s = &self.running[i];
            if s.generated.len() >= trace[s.request].output_len {
                let s = self.running.swap_remove(i);
                self.free_slots.push(s.slot);
                self.finished.push(Finished {
                    request: s.request,
                    arrival_s: trace[s.request].arrival_s,
                    token_times: s.token_times,
                    tokens: s.generated,
                });
            } else {
                i += 1;
            }
        }
        Ok(())
    }
}

/// `take` prompt tokens from `from`, as a piece of `slot`; its logits are wanted when it ends
/// the prompt (the first generated token).
fn chunk(slot: usize, prompt: &[u32], from: usize, take: usize) -> Piece {
    Piece {
        slot,
        start: from,
        tokens: prompt[from..from + take].to_vec(),
        logits: from + take == prompt.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serving::trace::{TraceConfig, chat_trace};

    fn request(id: usize, arrival_s: f64, prompt: usize, output_len: usize) -> Request {
        Request {
            id,
            arrival_s,
            prompt: (0..prompt as u32).collect(),
            output_len,
        }
    }

    #[test]
    fn decodes_go_first_then_chunks_within_the_budget() {
        let trace = [request(0, 0.0, 10, 3), request(1, 0.0, 20, 2)];
        let cfg = SchedulerConfig {
            token_budget: 16,
            slots: 4,
            slot_positions: 64,
        };
        let mut s = Scheduler::new(cfg, &trace).unwrap();
        let p = s.plan(0.0);
        // Request 0 whole (10), request 1's first 6 tokens.
        assert_eq!(p.tokens(), 16);
        assert_eq!(p.pieces[0].tokens.len(), 10);
        assert!(p.pieces[0].logits);
        assert_eq!((p.pieces[1].start, p.pieces[1].tokens.len()), (0, 6));
        assert!(!p.pieces[1].logits);
        s.complete(&p, &[100], 0.1).unwrap();
        let p = s.plan(0.1);
        // Request 0 decodes its token 100 at position 10; request 1's next 14 tokens end it.
        assert_eq!(
            p.pieces[0],
            Piece {
                slot: p.pieces[0].slot,
                start: 10,
                tokens: vec![100],
                logits: true
            }
        );
        assert_eq!(
            (
                p.pieces[1].start,
                p.pieces[1].tokens.len(),
                p.pieces[1].logits
            ),
            (6, 14, true)
        );
        assert!(!p.is_pure_decode());
        s.complete(&p, &[101, 200], 0.2).unwrap();
        let p = s.plan(0.2);
        assert!(p.is_pure_decode());
        assert_eq!(p.tokens(), 2);
        s.complete(&p, &[102, 201], 0.3).unwrap();
        assert!(s.done(), "3 and 2 tokens generated");
        let f = s.finished();
        let zero = f.iter().find(|f| f.request == 0).unwrap();
        assert_eq!(zero.tokens, [100, 101, 102]);
        assert_eq!(zero.token_times, [0.1, 0.2, 0.3]);
    }

    #[test]
    fn slots_are_taken_and_freed() {
        let trace = [
            request(0, 0.0, 4, 1),
            request(1, 0.0, 4, 1),
            request(2, 5.0, 4, 1),
        ];
        let cfg = SchedulerConfig {
            token_budget: 64,
            slots: 1,
            slot_positions: 8,
        };
        let mut s = Scheduler::new(cfg, &trace).unwrap();
        let p = s.plan(0.0);
        assert_eq!(p.pieces.len(), 1, "one slot: one sequence");
        s.complete(&p, &[1], 0.0).unwrap();
        let p = s.plan(0.0);
        assert_eq!(p.pieces.len(), 1, "the freed slot takes request 1");
        s.complete(&p, &[1], 0.0).unwrap();
        assert!(s.idle());
        assert_eq!(s.next_arrival_s(), Some(5.0));
        assert!(s.plan(1.0).pieces.is_empty(), "request 2 has not arrived");
        let p = s.plan(5.0);
        s.complete(&p, &[1], 5.0).unwrap();
        assert!(s.done());
    }

    #[test]
    fn a_whole_trace_runs_to_the_end_within_its_slots() {
        let trace = chat_trace(&TraceConfig {
            requests: 64,
            prompt: (16, 300),
            output: (4, 40),
            ..TraceConfig::default()
        })
        .unwrap();
        let cfg = SchedulerConfig {
            token_budget: 128,
            slots: 8,
            slot_positions: 340,
        };
        let mut s = Scheduler::new(cfg, &trace).unwrap();
        let mut now = 0.0;
        for _ in 0..100_000 {
            if s.done() {
                break;
            }
            if s.idle() {
                now = s.next_arrival_s().unwrap();
            }
            let p = s.plan(now);
            assert!(p.tokens() <= 128);
            let mut slots: Vec<usize> = p.pieces.iter().map(|p| p.slot).collect();
            slots.sort_unstable();
            slots.dedup();
            assert_eq!(slots.len(), p.pieces.len(), "one piece per sequence");
            assert!(slots.iter().all(|&s| s < 8));
            let ids = vec![7; p.pieces.iter().filter(|p| p.logits).count()];
            s.complete(&p, &ids, now).unwrap();
            now += 0.01;
        }
        assert!(s.done());
        for f in s.finished() {
            assert_eq!(f.tokens.len(), trace[f.request].output_len);
        }
    }

    #[test]
    fn requests_that_never_fit_are_errors() {
        let trace = [request(0, 0.0, 10, 8)];
        let cfg = SchedulerConfig {
            token_budget: 8,
            slots: 1,
            slot_positions: 16,
        };
        assert!(Scheduler::new(cfg, &trace).is_err(), "needs 17 positions");
        let unsorted = [request(0, 1.0, 1, 1), request(1, 0.0, 1, 1)];
        let cfg = SchedulerConfig {
            token_budget: 8,
            slots: 1,
            slot_positions: 16,
        };
        assert!(Scheduler::new(cfg, &unsorted).is_err());
        // Hand-built requests the loop can't run: an empty prompt, no output.
        for bad in [
            request(0, 0.0, 0, 4),
            request(0, 0.0, 4, 0),
            request(0, 0.0, 0, 0),
        ] {
            let err = Scheduler::new(cfg, std::slice::from_ref(&bad)).unwrap_err();
            assert!(err.to_string().contains("both must be >= 1"), "{err}");
        }
        let nan = request(0, f64::NAN, 4, 4);
        assert!(Scheduler::new(cfg, std::slice::from_ref(&nan)).is_err());
        // A hand-built output length near usize::MAX: refused (it never fits), no overflow.
        let huge = request(0, 0.0, 4, usize::MAX);
        assert!(Scheduler::new(cfg, std::slice::from_ref(&huge)).is_err());
    }
}
