//! `--keys-growth`: capture cost and pool as the key space grows from the batch alone to
//! batch x draft width x sampling, on the Qwen3-0.6B-shaped decoder: 35 batch sizes (up to
//! 256), draft widths q = 1, 2, 4 (`buckets = [tokens[1] + positions[1] = [1, 2, 4]]`,
//! speculative decoding's verification) and greedy sampling on the device on or off
//! (`variants = [greedy = [false, true]]`), 35, 105 and 210 graphs, one pool each, against
//! the largest graph alone.

use std::time::Instant;

use cudagraph::{DType, InputSpec, Result, Runtime, Tensor, cuda_graph, ops};
use cudagraph_models::llama::{Llama, LlamaConfig};

type BoxResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The multi-token step, and greedy ids instead of logits when `greedy`.
fn step(
    rt: &Runtime,
    model: &Llama,
    tokens: &Tensor,
    positions: &Tensor,
    greedy: bool,
) -> Result<Tensor> {
    let logits = model.forward_multi(rt, tokens, positions)?;
    if !greedy {
        return Ok(logits);
    }
    let (b, q, vocab) = (logits.dim(0)?, logits.dim(1)?, logits.dim(2)?);
    let flat = logits.into_shape(&[b * q, vocab])?;
    ops::argmax_rows(rt, &flat)?.into_shape(&[b, q])
}

/// A tensor's elements as bits (u32 ids, or bf16 logits).
fn bits(rt: &Runtime, t: &Tensor) -> Result<Vec<u32>> {
    Ok(match t.dtype() {
        DType::U32 => rt.download::<u32>(t)?,
        _ => rt
            .download::<half::bf16>(t)?
            .iter()
            .map(|x| u32::from(x.to_bits()))
            .collect(),
    })
}

/// The decoder under three key spaces.
struct Keyed<'a>(&'a Llama);

impl Keyed<'_> {
    /// 35 batch sizes, q = 4 only, logits only: 35 graphs.
    #[cuda_graph(
        sizes = [1, 2, 4, 8..=256 step 8],
        buckets = [tokens[1] + positions[1] = [4]],
        variants = [greedy = [false]],
        pad = [positions = -1]
    )]
    fn sizes(
        &self,
        rt: &Runtime,
        tokens: &Tensor,
        positions: &Tensor,
        greedy: bool,
    ) -> Result<Tensor> {
        step(rt, self.0, tokens, positions, greedy)
    }

    /// 35 sizes x q = 1, 2, 4: 105 graphs.
    #[cuda_graph(
        sizes = [1, 2, 4, 8..=256 step 8],
        buckets = [tokens[1] + positions[1] = [1, 2, 4]],
        variants = [greedy = [false]],
        pad = [positions = -1]
    )]
    fn widths(
        &self,
        rt: &Runtime,
        tokens: &Tensor,
        positions: &Tensor,
        greedy: bool,
    ) -> Result<Tensor> {
        step(rt, self.0, tokens, positions, greedy)
    }

    /// 35 sizes x q = 1, 2, 4 x greedy off and on: 210 graphs.
    #[cuda_graph(
        sizes = [1, 2, 4, 8..=256 step 8],
        buckets = [tokens[1] + positions[1] = [1, 2, 4]],
        variants = [greedy = [false, true]],
        pad = [positions = -1]
    )]
    fn all(
        &self,
        rt: &Runtime,
        tokens: &Tensor,
        positions: &Tensor,
        greedy: bool,
    ) -> Result<Tensor> {
        step(rt, self.0, tokens, positions, greedy)
    }
}

/// Captures the three key spaces (after one warm capture, so cuBLAS's first-use loading is
/// paid before the first timed one) and prints the growth table; checks one key of the
/// largest against its eager step, bit for bit.
pub fn run(rt: &Runtime) -> BoxResult<()> {
    let cfg = LlamaConfig::qwen3_0_6b_shaped();
    let model = Llama::random(rt, cfg.clone(), 0)?;
    println!("key-space growth: {cfg} | device {}", rt.device_name()?);
    let keyed = Keyed(&model);
    let specs = [
        InputSpec::new(DType::U32, &[4])?,
        InputSpec::new(DType::I32, &[4])?,
    ];
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    drop(keyed.sizes_graphs(rt, specs)?); // warm: modules and GEMM plans loaded
    let alone = keyed.sizes_graph_memory(rt, specs)?;
    println!(
        "the largest graph alone (b = 256, q = 4, logits): pool {:.1} MiB",
        mib(alone.pool_bytes)
    );
    println!("\n| key space | graphs | capture s | ms a graph | pool MiB | pool / largest alone |");
    println!("|---|---:|---:|---:|---:|---:|");
    let row = |name: &str, graphs: usize, capture_s: f64, pool: usize| {
        println!(
            "| {name} | {graphs} | {capture_s:.3} | {:.2} | {:.1} | {:.3}x |",
            capture_s * 1e3 / graphs.max(1) as f64,
            mib(pool),
            pool as f64 / alone.pool_bytes.max(1) as f64
        );
    };
    let t = Instant::now();
    let g = keyed.sizes_graphs(rt, specs)?;
    row(
        "35 sizes",
        g.stats().sizes.len(),
        t.elapsed().as_secs_f64(),
        g.stats().pool_bytes,
    );
    drop(g);
    let t = Instant::now();
    let g = keyed.widths_graphs(rt, specs)?;
    row(
        "35 sizes x 3 widths",
        g.stats().sizes.len(),
        t.elapsed().as_secs_f64(),
        g.stats().pool_bytes,
    );
    drop(g);
    let t = Instant::now();
    let mut g = keyed.all_graphs(rt, specs)?;
    let all_s = t.elapsed().as_secs_f64();
    row(
        "35 sizes x 3 widths x 2 variants",
        g.stats().sizes.len(),
        all_s,
        g.stats().pool_bytes,
    );
    // One key of the largest space replays like its eager step (same kernels, same shapes).
    let (b, q) = (24usize, 2usize);
    let tokens: Vec<u32> = (0..b * q).map(|i| (i * 7919 % cfg.vocab) as u32).collect();
    let positions: Vec<i32> = (0..b * q).map(|i| (i % q) as i32 + 3).collect();
    let (t_in, p_in) = (
        rt.upload(&tokens, &[b, q])?,
        rt.upload(&positions, &[b, q])?,
    );
    for greedy in [false, true] {
        let eager = step(rt, &model, &t_in, &p_in, greedy)?;
        let out = g.run_with([&t_in, &p_in], &(greedy,))?;
        let same = out.replayed() && bits(rt, &out)? == bits(rt, &eager)?;
        println!("b = {b}, q = {q}, greedy = {greedy}: replayed and bit-equal to eager: {same}");
    }
    Ok(())
}
