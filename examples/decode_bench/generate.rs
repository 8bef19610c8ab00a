//! Generation mode (`--model DIR`): loads a Hugging Face checkpoint folder, prefills a prompt
//! and decodes greedily, once with the eager forward and once with the graph runner, and
//! prints both token sequences (and texts) and their speeds.
//!
//! ```text
//! decode_bench --model DIR [--prompt "text" | --prompt-ids 1,2,3] [--max-new-tokens 16]
//!              [--prefill batched|steps] [--ignore-eos] [--dump-logits FILE] [--cache-tokens N]
//! ```
//!
//! `--prompt` encodes the text with the folder's `tokenizer.json` (the `tokenizers` crate, with
//! the file's special tokens, as transformers' `tokenizer(text)` does) and prints the generated
//! text; a folder without one is an error that says so. The prompt is prefilled in one batched
//! eager forward (`Llama::prefill`, sequence slot 0), or with `--prefill steps` one token per
//! decode step (the eager forward, or the graphs in the graph run). Then each step feeds the
//! previous step's argmax (first maximum on ties), until `--max-new-tokens` ids or an EOS id
//! of the checkpoint (`eos_token_id`; `generation_config.json`'s replace config.json's) unless
//! `--ignore-eos`. With `--prefill steps` a dynamic RoPE scaling rotates each prompt token for
//! its own length (transformers' one forward over the prompt uses the prompt's length).
//! The graph run re-does the prefill, overwriting the cache positions the eager run wrote.
//! Parseable lines: `ids eager: ...`, `ids graph: ...`, `text eager: "..."` and
//! `text graph: "..."` (JSON strings, with a tokenizer), `tok/s eager: ...`, `tok/s graph: ...`.
//! With `--dump-logits FILE`, the logits at the last prompt position are written as `vocab`
//! little-endian f32 values: the eager run's to `FILE`, the graph run's to `FILE.graph` (with
//! `--prefill steps` from graph replays; with a batched prefill both runs prefill with the same
//! eager forward, and only their decode steps differ).

use crate::common::relative_error;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cudagraph::ops::RopeScaling;
use cudagraph::{Runtime, Tensor};
use cudagraph_models::hf::{Checkpoint, LoadError, LoadOptions, Tokenizer};
use cudagraph_models::llama::{Llama, LlamaConfig};
use half::bf16;

type BoxResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The KV-cache slots of a loaded model: every captured graph (up to size 256) writes slots
/// `0..size`.
const CACHE_SLOTS: usize = 256;

/// How the prompt is prefilled.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum PrefillMode {
    /// One batched eager forward over the prompt (`Llama::prefill`).
    #[default]
    Batched,
    /// One decode step per prompt token.
    Steps,
}

/// Options of the generation mode.
#[derive(Debug, Default)]
pub struct GenerateOptions {
    /// The checkpoint folder; `None`: the benchmark runs instead.
    pub model: Option<PathBuf>,
    /// The prompt's token ids (default `1,2,3,4`).
    pub prompt_ids: Option<Vec<u32>>,
    /// The prompt as text, encoded with the folder's `tokenizer.json`.
    pub prompt: Option<String>,
    /// How the prompt is prefilled.
    pub prefill: PrefillMode,
    /// Generate `max_new_tokens` ids even past an EOS id.
    pub ignore_eos: bool,
    /// Tokens to generate (default 16).
    pub max_new_tokens: Option<usize>,
    /// Where to write the last prompt position's logits.
    pub dump_logits: Option<PathBuf>,
    /// KV-cache positions per sequence (default: prompt + new tokens, rounded up to 64).
    pub cache_tokens: Option<usize>,
}

impl GenerateOptions {
    /// The flags this mode takes (each with a value).
    pub const FLAGS: &'static [&'static str] = &[
        "--model",
        "--prompt-ids",
        "--prompt",
        "--prefill",
        "--max-new-tokens",
        "--dump-logits",
        "--cache-tokens",
    ];

    /// The flags this mode takes without a value.
    pub const SWITCHES: &'static [&'static str] = &["--ignore-eos"];

    /// The usage text of these flags.
    pub const USAGE: &'static str = "[--model DIR [--prompt \"text\" | --prompt-ids 1,2,3] [--max-new-tokens N] [--prefill batched|steps] [--ignore-eos] [--dump-logits FILE] [--cache-tokens N]]";

    /// Turns on `switch` (one of [`SWITCHES`](Self::SWITCHES)).
    pub fn switch(&mut self, switch: &str) -> Result<(), String> {
        match switch {
            "--ignore-eos" => self.ignore_eos = true,
            other => return Err(format!("unknown argument `{other}`")),
        }
        Ok(())
    }

    /// Sets `flag` (one of [`FLAGS`](Self::FLAGS)) to `value`.
    pub fn set(&mut self, flag: &str, value: &str) -> Result<(), String> {
        let number = |v: &str| {
            v.trim()
                .parse::<usize>()
                .map_err(|e| format!("{flag}: {e}"))
        };
        match flag {
            "--model" => self.model = Some(PathBuf::from(value)),
            "--prompt-ids" => {
                let ids = value
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse::<u32>()
                            .map_err(|e| format!("{flag}: `{s}`: {e}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                self.prompt_ids = Some(ids);
            }
            "--prompt" => self.prompt = Some(value.to_string()),
            "--prefill" => {
                self.prefill = match value {
                    "batched" => PrefillMode::Batched,
                    "steps" => PrefillMode::Steps,
                    other => {
                        return Err(format!(
                            "--prefill: `{other}`: expected `batched` or `steps`"
                        ));
                    }
                }
            }
            "--max-new-tokens" => self.max_new_tokens = Some(number(value)?),
            "--dump-logits" => self.dump_logits = Some(PathBuf::from(value)),
            "--cache-tokens" => self.cache_tokens = Some(number(value)?),
            other => return Err(format!("unknown argument `{other}`")),
        }
        Ok(())
    }

    /// Checks the combination: the other flags need `--model`; counts are at least 1.
    pub fn check(&self) -> Result<(), String> {
        let others = self.prompt_ids.is_some()
            || self.prompt.is_some()
            || self.ignore_eos
            || self.prefill != PrefillMode::Batched
            || self.max_new_tokens.is_some()
            || self.dump_logits.is_some()
            || self.cache_tokens.is_some();
        if self.model.is_none() && others {
            return Err(
                "--prompt, --prompt-ids, --prefill, --ignore-eos, --max-new-tokens, --dump-logits and --cache-tokens need --model DIR"
                    .into(),
            );
        }
        if self.prompt.is_some() && self.prompt_ids.is_some() {
            return Err("give the prompt as --prompt \"text\" or as --prompt-ids, not both".into());
        }
        if self.prompt.as_deref().is_some_and(str::is_empty) {
            return Err("--prompt needs some text".into());
        }
        if self.prompt_ids.as_ref().is_some_and(Vec::is_empty) {
            return Err("--prompt-ids needs at least one id".into());
        }
        if self.max_new_tokens == Some(0) || self.cache_tokens == Some(0) {
            return Err("--max-new-tokens and --cache-tokens must be at least 1".into());
        }
        Ok(())
    }

    /// Whether generation mode is on (`--model` given).
    pub fn enabled(&self) -> bool {
        self.model.is_some()
    }
}

/// Runs generation mode; prints the error and returns failure if anything fails.
pub fn main(rt: &Runtime, opts: &GenerateOptions) -> ExitCode {
    match run(rt, opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("decode_bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One greedy generation: the new ids, the logits at the last prompt position, and timings.
struct Generation {
    ids: Vec<u32>,
    prompt_logits: Vec<f32>,
    prefill: Duration,
    decode: Duration,
    decode_steps: usize,
}

impl Generation {
    fn tokens_per_s(&self) -> f64 {
        self.decode_steps as f64 / self.decode.as_secs_f64()
    }
}

/// The index of the first maximum (NaN never wins).
fn argmax(logits: &[bf16]) -> u32 {
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if v.to_f32() > logits[best].to_f32() || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// Prefills `prompt` (one batched forward with `prefill`, or one `step` per token) and
/// decodes up to `new_tokens` ids greedily with `step`, which runs one decode step of one
/// sequence and returns its logits; stops after an id of `eos`.
fn generate(
    rt: &Runtime,
    prompt: &[u32],
    (new_tokens, eos): (usize, &[u32]),
    mode: PrefillMode,
    mut prefill: impl FnMut(&Tensor) -> BoxResult<Vec<bf16>>,
    mut step: impl FnMut(&Tensor, &Tensor) -> BoxResult<Vec<bf16>>,
) -> BoxResult<Generation> {
    let mut run = |token: u32, position: usize| -> BoxResult<Vec<bf16>> {
        let tokens = rt.upload(&[token], &[1])?;
        let positions = rt.upload(&[i32::try_from(position)?], &[1])?;
        step(&tokens, &positions)
    };
    let started = Instant::now();
    let mut logits = match mode {
        PrefillMode::Batched => prefill(&rt.upload(prompt, &[prompt.len()])?)?,
        PrefillMode::Steps => {
            let mut logits = Vec::new();
            for (position, &token) in prompt.iter().enumerate() {
                logits = run(token, position)?;
            }
            logits
        }
    };
    let prefill = started.elapsed();
    let prompt_logits: Vec<f32> = logits.iter().map(|v| v.to_f32()).collect();
    let mut ids = vec![argmax(&logits)];
    let started = Instant::now();
    while ids.len() < new_tokens && !eos.contains(&ids[ids.len() - 1]) {
        let position = prompt.len() + ids.len() - 1;
        let last = ids[ids.len() - 1];
        logits = run(last, position)?;
        ids.push(argmax(&logits));
    }
    Ok(Generation {
        decode_steps: ids.len() - 1,
        ids,
        prompt_logits,
        prefill,
        decode: started.elapsed(),
    })
}

fn describe(family: &str, cfg: &LlamaConfig) -> String {
    let mut variant = Vec::new();
    if cfg.qkv_bias {
        variant.push("q/k/v bias");
    }
    if cfg.o_bias {
        variant.push("o bias");
    }
    if cfg.qk_norm {
        variant.push("q/k norm");
    }
    variant.push(if cfg.tie_embeddings {
        "tied embeddings"
    } else {
        "untied head"
    });
    let rope = match cfg.rope_scaling {
        RopeScaling::None => String::new(),
        scaling => format!(" ({} scaling: {scaling:?})", scaling.name()),
    };
    format!(
        "{family}: {cfg}, rope_theta {}{rope}, rms_eps {:e}; {}",
        cfg.rope_theta,
        cfg.rms_eps,
        variant.join(", ")
    )
}

fn ids_line(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
}

fn write_logits(path: &std::path::Path, logits: &[f32]) -> BoxResult<()> {
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}

/// The folder's tokenizer: required with `--prompt`, else used when present.
fn tokenizer(dir: &std::path::Path, required: bool) -> BoxResult<Option<Tokenizer>> {
    match Tokenizer::open(dir) {
        Ok(t) => Ok(Some(t)),
        Err(LoadError::NoTokenizer { .. }) if !required => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn run(rt: &Runtime, opts: &GenerateOptions) -> BoxResult<()> {
    let dir = opts.model.as_deref().ok_or("--model DIR is required")?;
    let tokenizer = tokenizer(dir, opts.prompt.is_some())?;
    let prompt = match (&opts.prompt, &tokenizer) {
        (Some(text), Some(tok)) => {
            let ids = tok.encode(text, true)?;
            if ids.is_empty() {
                return Err(format!("--prompt {text:?} encodes to no token").into());
            }
            ids
        }
        _ => opts.prompt_ids.clone().unwrap_or_else(|| vec![1, 2, 3, 4]),
    };
    let new_tokens = opts.max_new_tokens.unwrap_or(16);
    let needed = prompt.len() + new_tokens;
    let cache_tokens = opts
        .cache_tokens
        .unwrap_or_else(|| needed.next_multiple_of(64));
    if cache_tokens < needed {
        return Err(format!(
            "--cache-tokens {cache_tokens} is shorter than the prompt and the new tokens ({needed})"
        )
        .into());
    }
    let load_opts = LoadOptions {
        cache_slots: CACHE_SLOTS,
        cache_tokens,
    };

    let started = Instant::now();
    let ckpt = Checkpoint::open(dir, &load_opts)?;
    let hf = ckpt.config().clone();
    let cfg = hf.model.clone();
    if let Some(bad) = prompt.iter().find(|&&id| id as usize >= cfg.vocab) {
        return Err(format!(
            "{}: id {bad} is outside the vocabulary (vocab_size {})",
            if opts.prompt.is_some() {
                "--prompt's tokenizer"
            } else {
                "--prompt-ids"
            },
            cfg.vocab
        )
        .into());
    }
    let weights = ckpt.read_weights()?;
    let model = Llama::from_weights(rt, cfg.clone(), &weights)?;
    drop(weights);
    println!(
        "device: {} | model: {} | {}",
        rt.device_name()?,
        dir.display(),
        describe(hf.family.architecture(), &cfg)
    );
    let mut stored: Vec<String> = ckpt
        .index()
        .tensors
        .values()
        .map(|t| t.dtype.to_string())
        .collect();
    stored.sort();
    stored.dedup();
    println!(
        "weights: {} safetensors file(s), stored as {}, computed in bf16; KV cache {CACHE_SLOTS} slots x {cache_tokens} positions; loaded in {:.2} s",
        ckpt.index().files.len(),
        stored.join(" and "),
        started.elapsed().as_secs_f64()
    );
    println!("prompt ids: {}", ids_line(&prompt));
    let eos: &[u32] = if opts.ignore_eos {
        &[]
    } else {
        &hf.eos_token_ids
    };
    println!(
        "EOS ids: {} | prefill: {:?} | tokenizer: {}",
        if eos.is_empty() {
            "none (generates --max-new-tokens ids)".to_string()
        } else {
            ids_line(eos)
        },
        opts.prefill,
        tokenizer
            .as_ref()
            .map_or("none (no tokenizer.json)".to_string(), |t| t
                .path()
                .display()
                .to_string())
    );

    // Kernel compilation and cuBLAS set-up, outside the timings (the prefill rewrites the
    // cache position this writes).
    let started = Instant::now();
    let (t, p) = (rt.upload(&[prompt[0]], &[1])?, rt.upload(&[0i32], &[1])?);
    model.forward(rt, &t, &p)?;
    rt.synchronize()?;
    println!(
        "first eager forward (kernel compilation, cuBLAS setup) {:.2} s",
        started.elapsed().as_secs_f64()
    );

    let prefill = |tokens: &Tensor| -> BoxResult<Vec<bf16>> {
        Ok(rt.download::<bf16>(&model.prefill(rt, tokens, 0, 0)?)?)
    };
    let eager = generate(
        rt,
        &prompt,
        (new_tokens, eos),
        opts.prefill,
        prefill,
        |t, p| {
            let logits = model.forward(rt, t, p)?;
            Ok(rt.download::<bf16>(&logits)?)
        },
    )?;

    let started = Instant::now();
    let mut graphs = model.forward_graphs(rt, cfg.input_specs()?)?;
    println!(
        "captured {} graphs in {:.2} s",
        graphs.sizes().len(),
        started.elapsed().as_secs_f64()
    );
    let graph = generate(
        rt,
        &prompt,
        (new_tokens, eos),
        opts.prefill,
        prefill,
        |t, p| {
            let out = graphs.run([t, p])?;
            if !out.replayed() {
                return Err("the graph runner fell back to eager for a batch of 1".into());
            }
            Ok(rt.download::<bf16>(&out)?)
        },
    )?;

    println!("ids eager: {}", ids_line(&eager.ids));
    println!("ids graph: {}", ids_line(&graph.ids));
    if let Some(tok) = &tokenizer {
        // JSON strings: one line each whatever the text holds.
        println!(
            "prompt text: {}",
            serde_json::Value::from(tok.decode(&prompt, true)?)
        );
        println!(
            "text eager: {}",
            serde_json::Value::from(tok.decode(&eager.ids, true)?)
        );
        println!(
            "text graph: {}",
            serde_json::Value::from(tok.decode(&graph.ids, true)?)
        );
    }
    println!();
    println!(
        "| path  | prefill tokens | prefill ms | prefill tok/s | decode steps | decode ms | decode tok/s |"
    );
    println!(
        "|-------|---------------:|-----------:|--------------:|-------------:|----------:|-------------:|"
    );
    for (name, g) in [("eager", &eager), ("graph", &graph)] {
        println!(
            "| {name} | {:>14} | {:>10.2} | {:>13.0} | {:>12} | {:>9.2} | {:>12.1} |",
            prompt.len(),
            g.prefill.as_secs_f64() * 1e3,
            prompt.len() as f64 / g.prefill.as_secs_f64(),
            g.decode_steps,
            g.decode.as_secs_f64() * 1e3,
            g.tokens_per_s()
        );
    }
    println!();
    println!("tok/s eager: {:.1}", eager.tokens_per_s());
    println!("tok/s graph: {:.1}", graph.tokens_per_s());
    let same = eager
        .ids
        .iter()
        .zip(&graph.ids)
        .take_while(|(a, b)| a == b)
        .count();
    println!(
        "last prompt position logits, graph vs eager: relative error {:.3e}; greedy ids identical for {same} of {} steps",
        relative_error(
            graph.prompt_logits.iter().map(|&v| f64::from(v)),
            eager.prompt_logits.iter().map(|&v| f64::from(v)),
        ),
        eager.ids.len().max(graph.ids.len())
    );
    if let Some(path) = &opts.dump_logits {
        write_logits(path, &eager.prompt_logits)?;
        let mut graph_path = path.clone().into_os_string();
        graph_path.push(".graph");
        let graph_path = PathBuf::from(graph_path);
        write_logits(&graph_path, &graph.prompt_logits)?;
        println!(
            "logits written: {} (eager), {} (graph); {} little-endian f32 each",
            path.display(),
            graph_path.display(),
            cfg.vocab
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_check() {
        let mut o = GenerateOptions::default();
        assert!(o.check().is_ok() && !o.enabled());
        o.set("--prompt-ids", "1, 2,3").unwrap();
        assert!(o.check().is_err(), "needs --model");
        o.set("--model", "/m").unwrap();
        o.set("--max-new-tokens", "5").unwrap();
        assert!(o.check().is_ok() && o.enabled());
        assert_eq!(o.prompt_ids, Some(vec![1, 2, 3]));
        assert!(o.set("--prompt-ids", "1,x").is_err());
        o.set("--max-new-tokens", "0").unwrap();
        assert!(o.check().is_err());
        o.set("--max-new-tokens", "3").unwrap();
        o.set("--prompt", "Hello").unwrap();
        assert!(o.check().is_err(), "--prompt with --prompt-ids");
        o.prompt_ids = None;
        assert!(o.check().is_ok());
        o.set("--prefill", "steps").unwrap();
        assert_eq!(o.prefill, PrefillMode::Steps);
        assert!(o.set("--prefill", "chunked").is_err());
        o.switch("--ignore-eos").unwrap();
        assert!(o.ignore_eos && o.check().is_ok());
        let mut no_model = GenerateOptions::default();
        no_model.switch("--ignore-eos").unwrap();
        assert!(no_model.check().is_err(), "needs --model");
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        let v = |xs: &[f32]| xs.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>();
        assert_eq!(argmax(&v(&[1.0, 3.0, 3.0, 2.0])), 1);
        assert_eq!(argmax(&v(&[f32::NAN, 0.5, 0.25])), 1);
        assert_eq!(argmax(&v(&[-1.0])), 0);
    }
}
