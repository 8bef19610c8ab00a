//! One run of the trace in one mode.

use std::time::Instant;

use cudagraph::{Result as CgResult, Runtime, Tensor};
use cudagraph_models::llama::Llama;
use cudagraph_models::serving::{
    Request, RunReport, Scheduler, SchedulerConfig, StepPlan, StepTables, StepTensors,
};

use crate::BoxResult;

/// How the steps run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every step eagerly.
    Eager,
    /// Pure-decode steps replay graphs; steps with a prompt chunk run eagerly (mistral.rs).
    DecodeGraphs,
    /// Every step replays the graph of its token count.
    Graphs,
    /// Every step replays graph segments with the attention in eager islands (vLLM piecewise).
    Islands,
}

impl Mode {
    /// `eager`, `decode`, `graphs` or `islands`.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "eager" => Mode::Eager,
            "decode" => Mode::DecodeGraphs,
            "graphs" => Mode::Graphs,
            "islands" => Mode::Islands,
            other => {
                return Err(format!(
                    "unknown mode {other} (eager, decode, graphs, islands)"
                ));
            }
        })
    }

    /// The name in the table.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Eager => "eager",
            Mode::DecodeGraphs => "decode-only graphs",
            Mode::Graphs => "every step graphed",
            Mode::Islands => "attention islands",
        }
    }
}

/// What one step returned: the sampled ids and, when it replayed, the captured size.
struct Stepped {
    ids: Vec<u32>,
    size: Option<usize>,
}

/// Downloads the first `count` of a step's ids.
fn sample(rt: &Runtime, ids: &Tensor, count: usize) -> CgResult<Vec<u32>> {
    let mut ids: Vec<u32> = rt.download(ids)?;
    ids.truncate(count);
    Ok(ids)
}

/// Runs `trace` through `model` in `mode`; returns the report and each request's tokens (by
/// request index).
pub fn run(
    rt: &Runtime,
    model: &Llama,
    mode: Mode,
    cfg: SchedulerConfig,
    trace: &[Request],
    bandwidth: f64,
) -> BoxResult<(RunReport, Vec<Vec<u32>>)> {
    let specs = model.step_input_specs()?;
    let capture = Instant::now();
    let mut full = match mode {
        Mode::DecodeGraphs | Mode::Graphs => Some(model.forward_step_graphs(rt, specs)?),
        _ => None,
    };
    let mut pieces = match mode {
        Mode::Islands => Some(model.forward_step_islands_graphs(rt, specs)?),
        _ => None,
    };
    let capture_s = capture.elapsed().as_secs_f64();
    let mut step = |t: &StepTensors, plan: &StepPlan, count: usize| -> CgResult<Stepped> {
        let [tokens, positions, slots, tiles, logit_rows] = t.inputs();
        match (mode, full.as_mut(), pieces.as_mut()) {
            (Mode::Graphs, Some(g), _) | (Mode::DecodeGraphs, Some(g), _)
                if mode == Mode::Graphs || plan.is_pure_decode() =>
            {
                let out = g.run(t.inputs())?;
                // A replay's size (the debug mode runs eagerly through the replay path: not counted).
                let size = if out.replayed() { out.size() } else { None };
                Ok(Stepped {
                    ids: sample(rt, &out, count)?,
                    size,
                })
            }
            (Mode::Islands, _, Some(g)) => {
                let out = g.run(t.inputs())?;
                // A replay's size (the debug mode runs eagerly through the replay path: not counted).
                let size = if out.replayed() { out.size() } else { None };
                Ok(Stepped {
                    ids: sample(rt, &out, count)?,
                    size,
                })
            }
            _ => {
                let ids = model.forward_step(rt, tokens, positions, slots, tiles, logit_rows)?;
                Ok(Stepped {
                    ids: sample(rt, &ids, count)?,
                    size: None,
                })
            }
        }
    };

    let mut sched = Scheduler::new(cfg, trace)?;
    let weight_bytes = model.config().decode_weight_bytes().unwrap_or(0) as f64;
    let kv_token_bytes = model.kv_bytes_per_slot(1).unwrap_or(0) as f64;
    let mut report = RunReport {
        mode: mode.name().to_string(),
        ..RunReport::default()
    };
    let (mut padded, mut real) = (0u64, 0u64);
    let start = Instant::now();
    let mut skipped = 0.0f64;
    let now = |skipped: f64| start.elapsed().as_secs_f64() + skipped;
    while !sched.done() {
        if sched.idle() {
            // Nothing to run until the next arrival: skip the gap rather than sleep through it.
            match sched.next_arrival_s() {
                Some(t) if t > now(skipped) => skipped += t - now(skipped),
                Some(_) => {}
                None => return Err("the scheduler is idle with requests unfinished".into()),
            }
        }
        let plan = sched.plan(now(skipped));
        if plan.pieces.is_empty() {
            if sched.idle() {
                continue;
            }
            return Err("a step with nothing in it while sequences run".into());
        }
        let tables = StepTables::build(&plan.pieces)?;
        let tensors = tables.upload(rt)?;
        let stepped = step(&tensors, &plan, tables.logit_count)?;
        report.steps += 1;
        if let Some(size) = stepped.size {
            report.replayed_steps += 1;
            padded += (size - tables.rows()) as u64;
            real += tables.rows() as u64;
        }
        // The floor: the weights once, each piece's cached context read once and its new
        // tokens' keys and values written, at the streaming bandwidth.
        let kv: f64 = plan
            .pieces
            .iter()
            .map(|p| (p.start + 2 * p.tokens.len()) as f64 * kv_token_bytes)
            .sum();
        report.bound_s += (weight_bytes + kv) / bandwidth;
        sched.complete(&plan, &stepped.ids, now(skipped))?;
    }
    report.wall_s = now(skipped);
    report.padding_waste = if real == 0 {
        0.0
    } else {
        padded as f64 / real as f64
    };
    report.fallbacks = match (&full, &pieces) {
        (Some(g), _) => g.stats().fallback_count(),
        (_, Some(g)) => g.stats().fallback_count(),
        _ => 0,
    };
    report.add_requests(sched.finished());
    if capture_s > 0.0 && (full.is_some() || pieces.is_some()) {
        println!("{}: graphs captured in {capture_s:.2} s", mode.name());
    }
    // Every step went through this runner: its histogram of token counts is the trace's.
    if let (Mode::Graphs, Some(g)) = (mode, &full) {
        for budget in [16, 35] {
            match g.advise_sizes(budget) {
                Ok(advice) => println!("sizes advised from this trace's steps: {advice}"),
                Err(e) => println!("no size advice: {e}"),
            }
        }
    }
    let mut tokens = vec![Vec::new(); trace.len()];
    for f in sched.finished() {
        tokens[f.request] = f.tokens.clone();
    }
    Ok((report, tokens))
}
