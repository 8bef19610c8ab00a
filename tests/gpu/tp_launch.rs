//! How the tensor-parallel tests start their two ranks: as two threads of this process
//! ([`run_ranks`]), or as two processes of this test binary ([`run_rank_process`]), each
//! running the ignored test [`tp_rank_worker`] with its rank, the NCCL id and a job folder.
//!
//! Processes are what `compute-sanitizer` needs: it runs one process's kernels one at a time,
//! so in one process rank 0's all-reduce would wait forever for rank 1's. `CUDAGRAPH_TP_PROCESSES=1`
//! makes every tensor-parallel test use processes (`scripts/gpu-run.sh sanitize` sets it); the
//! test `tp2_processes_match_tp1` always does.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use cudagraph::{Result, Runtime};
use cudagraph_models::hf::synthetic::ScratchDir;
use cudagraph_models::llama::LlamaConfig;
use cudagraph_models::tp::{self, NcclId, Rank, TpLlama, run_rank_process, run_ranks};
use cudagraph_models::weights::LlamaWeights;

use crate::common::download_f32;

/// `1`: the tensor-parallel tests start their ranks as processes.
pub const PROCESSES_ENV: &str = "CUDAGRAPH_TP_PROCESSES";
/// The job folder of a worker process (set only in the environment of a worker).
const WORKER_ENV: &str = "CUDAGRAPH_TP_WORKER";
/// The worker's rank.
const RANK_ENV: &str = "CUDAGRAPH_TP_RANK";
/// The NCCL id, as `NcclId::to_hex` writes it.
const ID_ENV: &str = "CUDAGRAPH_TP_NCCL_ID";
/// The test a worker process runs.
const WORKER_TEST: &str = "tp_launch::tp_rank_worker";
/// How long the workers may take (compute-sanitizer slows them down many times).
const WORKER_TIMEOUT: Duration = Duration::from_secs(900);

/// How the ranks are started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launch {
    /// One thread per rank in this process.
    Threads,
    /// One process per rank.
    Processes,
}

impl Launch {
    /// [`Processes`](Self::Processes) when `CUDAGRAPH_TP_PROCESSES=1`, else threads.
    pub fn from_env() -> Self {
        if std::env::var(PROCESSES_ENV).is_ok_and(|v| v.trim() == "1") {
            Self::Processes
        } else {
            Self::Threads
        }
    }
}

/// The model configurations of the tests, by name (a worker process rebuilds its test's).
pub fn config(name: &str) -> LlamaConfig {
    match name {
        // 4 q heads, 2 KV heads, MLP 512: two heads and one KV head per rank; 320 cache slots
        // (the fallback batch of 300 needs 300).
        "tiny" => LlamaConfig::tiny(),
        // q/k/v and output biases, Qwen3's q/k norms, an untied LM head.
        "variant" => LlamaConfig {
            q_heads: 8,
            kv_heads: 4,
            head_dim: 32,
            qkv_bias: true,
            o_bias: true,
            qk_norm: true,
            tie_embeddings: false,
            ..LlamaConfig::tiny()
        },
        other => panic!("no tensor-parallel test configuration named {other:?}"),
    }
}

/// One decode step's inputs and the single-GPU eager logits for them.
pub struct Case {
    pub n: usize,
    pub tokens: Vec<u32>,
    pub positions: Vec<i32>,
    pub reference: Vec<f32>,
}

/// What one rank returns: its captured sizes, graph nodes at batch 1, and per case whether a
/// graph replayed and the logits.
#[derive(Debug)]
pub struct RankOut {
    pub sizes: Vec<usize>,
    pub nodes_b1: usize,
    pub outputs: Vec<(bool, Vec<f32>)>,
}

/// The model of a test: its configuration's name and the seed of its random weights.
pub struct Model<'a> {
    pub config: &'a str,
    pub seed: u64,
    pub weights: &'a LlamaWeights,
}

/// Runs the cases on two ranks started as `launch` says.
pub fn run_tp2(launch: Launch, model: &Model<'_>, cases: &[Case]) -> Result<Vec<RankOut>> {
    let cfg = config(model.config);
    match launch {
        // SAFETY: both ranks run `rank_body` on the same configuration, weights and cases:
        // the same all-reduces when building the shard, the same captured sizes, then the
        // same batch sizes in the same order, in lockstep (a barrier before every case).
        Launch::Threads => unsafe {
            run_ranks(2, |rank| rank_body(&rank, &cfg, model.weights, cases))
        },
        Launch::Processes => Ok(run_processes(model, cases)),
    }
}

/// One rank: builds its shard, captures every size, runs every case through the runner (graph,
/// or the eager fallback above 256) with the pool and the eager outputs poisoned.
fn rank_body(
    rank: &Rank<'_>,
    cfg: &LlamaConfig,
    weights: &LlamaWeights,
    cases: &[Case],
) -> Result<RankOut> {
    let rt = Runtime::new(rank.rank)?;
    let model = TpLlama::from_weights(&rt, cfg.clone(), weights, rank)?;
    rank.sync.wait()?;
    let mut graphs = model.forward_graphs(&rt, cfg.input_specs()?)?;
    rank.sync.wait()?;
    let mut outputs = Vec::with_capacity(cases.len());
    for case in cases {
        let tokens = rt.upload(&case.tokens, &[case.n])?;
        let positions = rt.upload(&case.positions, &[case.n])?;
        graphs.poison_pool()?;
        rt.synchronize()?;
        rank.sync.wait()?;
        rt.set_poison_allocations(true);
        let out = graphs.run([&tokens, &positions]);
        rt.set_poison_allocations(false);
        let out = out?;
        assert_eq!(out.shape(), &[case.n, cfg.vocab]);
        outputs.push((out.replayed(), download_f32(&rt, &out)?));
    }
    let stats = graphs.stats();
    Ok(RankOut {
        sizes: graphs.sizes().to_vec(),
        nodes_b1: stats.sizes.first().map_or(0, |s| s.nodes),
        outputs,
    })
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// Writes the job, starts one worker process per rank, waits for both (stopping the other as
/// soon as one fails: it would wait forever in its next all-reduce) and reads their outputs.
/// Panics (fails the test) on any failure, with the worker's exit status.
fn run_processes(model: &Model<'_>, cases: &[Case]) -> Vec<RankOut> {
    let scratch = ScratchDir::new("tp").expect("a job folder");
    let dir = scratch.path();
    write_job(dir, model, cases);
    let id = NcclId::new().expect("ncclGetUniqueId");
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut children: Vec<Option<Child>> = (0..2)
        .map(|rank| {
            let child = Command::new(&exe)
                .args(["--exact", WORKER_TEST, "--ignored", "--nocapture"])
                .args(["--test-threads=1"])
                .env(WORKER_ENV, dir)
                .env(RANK_ENV, rank.to_string())
                .env(ID_ENV, id.to_hex())
                .spawn()
                .unwrap_or_else(|e| panic!("could not start the process of rank {rank}: {e}"));
            Some(child)
        })
        .collect();
    let started = Instant::now();
    let mut failure: Option<String> = None;
    while children.iter().any(Option::is_some) {
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(child) = slot.as_mut() else {
                continue;
            };
            match child.try_wait() {
                Ok(Some(status)) => {
                    *slot = None;
                    if !status.success() && failure.is_none() {
                        failure = Some(format!("rank {rank}'s process failed: {status}"));
                    }
                }
                Ok(None) => {}
                Err(e) => panic!("waiting for rank {rank}'s process: {e}"),
            }
        }
        if failure.is_none() && started.elapsed() > WORKER_TIMEOUT {
            failure = Some(format!("the ranks' processes ran past {WORKER_TIMEOUT:?}"));
        }
        if failure.is_some() {
            for child in children.iter_mut().flatten() {
                let _ = child.kill();
                let _ = child.wait();
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(failure) = failure {
        panic!("{failure} (its output is above)");
    }
    (0..2).map(|rank| read_out(&out_path(dir, rank))).collect()
}

/// A worker: one rank of a test that runs its ranks as processes. Does nothing (and says so)
/// when not started by [`run_processes`].
#[test]
#[ignore = "a worker process of the tensor-parallel tests, started by them"]
fn tp_rank_worker() -> Result<()> {
    let Ok(dir) = std::env::var(WORKER_ENV) else {
        println!("tp_rank_worker: not started by a tensor-parallel test; nothing to do");
        return Ok(());
    };
    let dir = PathBuf::from(dir);
    let rank: usize = std::env::var(RANK_ENV)
        .ok()
        .and_then(|r| r.parse().ok())
        .expect("CUDAGRAPH_TP_RANK");
    let id = NcclId::from_hex(&std::env::var(ID_ENV).expect("CUDAGRAPH_TP_NCCL_ID"))?;
    let (config_name, seed, cases) = read_job(&dir);
    let cfg = config(&config_name);
    let weights = tp::random_weights(&cfg, seed)?;
    // SAFETY: both workers read the same job (configuration, seed, cases) and run `rank_body`
    // on it: the same all-reduces when building the shard, the same captured sizes, then the
    // same batch sizes in the same order.
    let out = unsafe { run_rank_process(&id, 2, rank, |r| rank_body(&r, &cfg, &weights, &cases)) }?;
    let path = out_path(&dir, rank);
    let tmp = path.with_extension("tmp");
    write_out(&tmp, &out);
    std::fs::rename(&tmp, &path).expect("publish the rank's output");
    println!(
        "tp_rank_worker: rank {rank} ran {} cases",
        out.outputs.len()
    );
    Ok(())
}

fn out_path(dir: &Path, rank: usize) -> PathBuf {
    dir.join(format!("rank-{rank}.out"))
}

/// The job, as text: the configuration's name, the weights' seed, then one line per case:
/// `n;tokens;positions` (comma-separated). The references stay with the parent.
fn write_job(dir: &Path, model: &Model<'_>, cases: &[Case]) {
    let join = |v: &mut dyn Iterator<Item = String>| v.collect::<Vec<_>>().join(",");
    let mut text = format!("{}\n{}\n", model.config, model.seed);
    for c in cases {
        let tokens = join(&mut c.tokens.iter().map(u32::to_string));
        let positions = join(&mut c.positions.iter().map(i32::to_string));
        text.push_str(&format!("{};{tokens};{positions}\n", c.n));
    }
    std::fs::write(dir.join("job.txt"), text).expect("write the job");
}

fn read_job(dir: &Path) -> (String, u64, Vec<Case>) {
    let text = std::fs::read_to_string(dir.join("job.txt")).expect("read the job");
    let mut lines = text.lines();
    let config = lines.next().expect("job: configuration").to_string();
    let seed = lines
        .next()
        .and_then(|l| l.parse().ok())
        .expect("job: seed");
    let cases = lines
        .map(|line| {
            let mut parts = line.split(';');
            let mut field = || parts.next().expect("job: case field");
            let n: usize = field().parse().expect("job: n");
            let tokens: Vec<u32> = field()
                .split(',')
                .map(|t| t.parse().expect("token"))
                .collect();
            let positions: Vec<i32> = field()
                .split(',')
                .map(|p| p.parse().expect("position"))
                .collect();
            assert_eq!((tokens.len(), positions.len()), (n, n), "job: case of {n}");
            Case {
                n,
                tokens,
                positions,
                reference: Vec::new(),
            }
        })
        .collect();
    (config, seed, cases)
}

/// A rank's output, little-endian: sizes, nodes, then per case `replayed` and the logits.
fn write_out(path: &Path, out: &RankOut) {
    let put = |bytes: &mut Vec<u8>, v: usize| bytes.extend_from_slice(&(v as u64).to_le_bytes());
    let mut bytes = Vec::new();
    put(&mut bytes, out.sizes.len());
    out.sizes.iter().for_each(|&s| put(&mut bytes, s));
    put(&mut bytes, out.nodes_b1);
    put(&mut bytes, out.outputs.len());
    for (replayed, logits) in &out.outputs {
        put(&mut bytes, usize::from(*replayed));
        put(&mut bytes, logits.len());
        for v in logits {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    let mut file = std::fs::File::create(path).expect("create the rank's output");
    file.write_all(&bytes).expect("write the rank's output");
}

/// Reads [`write_out`]'s bytes in order.
struct Reader {
    bytes: Vec<u8>,
    at: usize,
}

impl Reader {
    fn take(&mut self, n: usize) -> &[u8] {
        let chunk = self
            .bytes
            .get(self.at..self.at + n)
            .expect("a rank's output ends early");
        self.at += n;
        chunk
    }

    fn u64(&mut self) -> usize {
        let mut word = [0u8; 8];
        word.copy_from_slice(self.take(8));
        u64::from_le_bytes(word) as usize
    }
}

fn read_out(path: &Path) -> RankOut {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut r = Reader { bytes, at: 0 };
    let sizes = (0..r.u64()).map(|_| r.u64()).collect();
    let nodes_b1 = r.u64();
    let outputs = (0..r.u64())
        .map(|_| {
            let replayed = r.u64() == 1;
            let len = r.u64();
            let logits = r
                .take(4 * len)
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (replayed, logits)
        })
        .collect();
    RankOut {
        sizes,
        nodes_b1,
        outputs,
    }
}

#[test]
fn rank_outputs_round_trip() {
    let scratch = ScratchDir::new("tp-test").expect("a scratch folder");
    let dir = scratch.path();
    let out = RankOut {
        sizes: vec![1, 2, 8],
        nodes_b1: 17,
        outputs: vec![(true, vec![1.5, -0.0, f32::NAN]), (false, vec![])],
    };
    write_out(&out_path(dir, 0), &out);
    let back = read_out(&out_path(dir, 0));
    assert_eq!((back.sizes.clone(), back.nodes_b1), (out.sizes.clone(), 17));
    assert_eq!(back.outputs.len(), 2);
    assert!(back.outputs[0].0 && !back.outputs[1].0);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&back.outputs[0].1), bits(&out.outputs[0].1));
    assert!(back.outputs[1].1.is_empty());
}
