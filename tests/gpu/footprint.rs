//! Issue 30's table: how much device memory each backend's graphs hold against what the same
//! forward needs eagerly. For each forward: the eager peak of the largest size (the
//! stream-ordered pool's `USED_MEM_HIGH`, reset right before, and what the pool reserved for
//! it, rounded as the pool rounds), the allocations of the largest
//! graph and of all graphs (the native pool's need; the graph memory nodes' virtual sizes), and
//! what is held (the pool: physical, mapped pages; graph memory nodes: the driver's reserved
//! graph memory above a trimmed baseline, physical):
//! - *largest alone*: only the largest size launched (the native pool: its own pool);
//! - *after capture*: right after the runner was built, before any launch (the capture's freeze
//!   scope trims graph memory when it ends; the runner then uploads its largest graph);
//! - *replayed ascending after a trim*: every size launched once, smallest first, on memory
//!   the driver had given back, so that the first launches map it in the traffic's order;
//! - *after release and resume*: `release_memory`, `resume` (which uploads the largest graph),
//!   then the same ascending launches.
//!
//! For the native pool the three "held" states read the pool's size, which is fixed by
//! construction (mapped whole at capture, unmapped and mapped whole by release and resume):
//! that row is the reference, not a measurement of order.
//!
//! A measurement, run with `--ignored footprint::`; it asserts only that every figure was read.

use std::sync::Arc;

use cudagraph::cudarc::driver::{CudaContext, CudaStream};
use cudagraph::{CudaTensor, GraphMemoryUsage, Result, StreamPoolUsage};
use cudagraph_models::cudarc_mlp::{CudarcMlp, MlpDims, capture_stream};
use cudagraph_models::llama::{Llama, LlamaConfig};

use crate::common::{Rng, draw_decode_inputs, fresh_seed, gpu};

/// One row of the table (bytes).
struct Row {
    forward: String,
    memory: &'static str,
    graphs: usize,
    eager_peak: EagerPeak,
    largest_nodes: u64,
    node_sum: u64,
    held: Held,
}

/// What a runner holds in each of the states the module docs list (bytes).
#[derive(Default)]
struct Held {
    largest_alone: u64,
    after_capture: u64,
    ascending: u64,
    resumed: u64,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn ratio(a: u64, b: u64) -> String {
    if b == 0 {
        "-".to_string()
    } else {
        format!("{:.2}x", a as f64 / b as f64)
    }
}

fn print(rows: &[Row]) {
    println!(
        "\n| forward | graph memory | graphs | eager peak, largest size MiB | eager pool reserved at that peak MiB | largest graph's allocations MiB | all graphs' allocations MiB | held: largest alone MiB | held after capture MiB | held, replayed ascending after a trim MiB | held after release + resume MiB | after capture / largest alone | after capture / eager peak | after resume / eager peak |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let h = &r.held;
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} |",
            r.forward,
            r.memory,
            r.graphs,
            mib(r.eager_peak.used),
            mib(r.eager_peak.reserved),
            mib(r.largest_nodes),
            mib(r.node_sum),
            mib(h.largest_alone),
            mib(h.after_capture),
            mib(h.ascending),
            mib(h.resumed),
            ratio(h.after_capture, h.largest_alone),
            ratio(h.after_capture, r.eager_peak.used),
            ratio(h.resumed, r.eager_peak.used),
        );
    }
}

/// An eager forward's peak on the stream-ordered pool (bytes above what was there before).
#[derive(Clone, Copy)]
struct EagerPeak {
    /// `USED_MEM_HIGH`: the bytes its allocations held at once.
    used: u64,
    /// `RESERVED_MEM_HIGH` from a trimmed pool: what the pool mapped for them (its rounding,
    /// to compare with the driver's rounding of graph memory).
    reserved: u64,
}

/// The eager peak of `f` on `ctx`'s device, over the second of two runs (the first
/// initialises lazily: modules, workspaces), from a trimmed pool with reset high-water marks;
/// `f` synchronizes.
fn eager_peak(ctx: &Arc<CudaContext>, mut f: impl FnMut() -> Result<()>) -> Result<EagerPeak> {
    f()?;
    StreamPoolUsage::trim(ctx)?;
    StreamPoolUsage::reset_high(ctx)?;
    let before = StreamPoolUsage::of_context(ctx)?;
    f()?;
    let after = StreamPoolUsage::of_context(ctx)?;
    Ok(EagerPeak {
        used: after.used_high.saturating_sub(before.used),
        reserved: after.reserved_high.saturating_sub(before.reserved),
    })
}

/// The native decoder (Qwen3-0.6B-shaped, 35 sizes up to 256): the reference, one pool.
fn native_row(rng: &mut Rng) -> Result<Option<Row>> {
    let Some(rt) = gpu("footprint::native") else {
        return Ok(None);
    };
    let ctx = CudaContext::new(0).map_err(cudagraph::Error::driver("cuCtx"))?;
    let cfg = LlamaConfig::qwen3_0_6b_shaped();
    let model = Llama::random(&rt, cfg.clone(), rng.next_u64())?;
    let largest = 256;
    let (tokens, positions) = draw_decode_inputs(&rt, rng, &cfg, largest)?;
    rt.synchronize()?;
    let peak = eager_peak(&ctx, || {
        let out = model.forward(&rt, &tokens, &positions)?;
        rt.synchronize()?;
        drop(out);
        Ok(())
    })?;
    let alone = model.forward_graph_memory(&rt, cfg.input_specs()?)?;
    let mut graphs = model.forward_graphs(&rt, cfg.input_specs()?)?;
    let after_capture = graphs.pool_bytes() as u64;
    let sizes = graphs.sizes().to_vec();
    // Every size once, smallest first; then again after a release and resume.
    let (mut ascending, mut resumed) = (0, 0);
    for held in [&mut ascending, &mut resumed] {
        if graphs.is_released() {
            graphs.resume()?;
        }
        for &n in &sizes {
            let (t, p) = draw_decode_inputs(&rt, rng, &cfg, n)?;
            drop(graphs.run([&t, &p])?);
        }
        rt.synchronize()?;
        *held = graphs.pool_bytes() as u64;
        graphs.release_memory()?;
    }
    graphs.resume()?;
    let stats = graphs.stats();
    Ok(Some(Row {
        forward: "native decoder (Qwen3-0.6B-shaped)".into(),
        memory: "pool",
        graphs: sizes.len(),
        eager_peak: peak,
        largest_nodes: alone.pool_bytes as u64,
        node_sum: allocation_bytes(stats).1,
        held: Held {
            largest_alone: alone.pool_bytes as u64,
            after_capture,
            ascending,
            resumed,
        },
    }))
}

/// The largest graph's and all graphs' allocation bytes (each size's `pool_need`).
fn allocation_bytes(stats: &cudagraph::RunnerStats) -> (u64, u64) {
    let needs = stats.sizes.iter().map(|s| s.pool_need as u64);
    (needs.clone().max().unwrap_or(0), needs.sum())
}

/// What [`node_held`] asks of a node-mode runner.
enum Op {
    /// Launch the size (inputs of fresh random values), not synchronized.
    Run(usize),
    /// Wait for what was launched.
    Sync,
    /// `release_memory`.
    Release,
    /// `resume`.
    Resume,
}

/// The driver's reserved graph memory, above `base`, at its high-water mark since `reset`.
fn reserved_high_above(ctx: &Arc<CudaContext>, base: u64) -> Result<u64> {
    Ok(GraphMemoryUsage::of_context(ctx)?
        .reserved_high
        .saturating_sub(base))
}

/// Trims the driver's graph memory, resets its high-water marks, and returns what it reserves
/// then: the baseline of the next measurement.
fn trimmed_baseline(ctx: &Arc<CudaContext>) -> Result<u64> {
    GraphMemoryUsage::trim(ctx)?;
    GraphMemoryUsage::reset_high(ctx)?;
    Ok(GraphMemoryUsage::of_context(ctx)?.reserved)
}

/// A node-mode runner's [`Held`] figures (see the module docs): `build` makes the runner from
/// a trimmed baseline, `op` runs what the measurement asks of it. Returns the runner too.
fn node_held<R>(
    ctx: &Arc<CudaContext>,
    build: impl FnOnce() -> Result<R>,
    sizes: &[usize],
    mut op: impl FnMut(&mut R, Op) -> Result<()>,
) -> Result<(R, Held)> {
    let base = trimmed_baseline(ctx)?;
    let mut runner = build()?;
    op(&mut runner, Op::Sync)?;
    let after_capture = GraphMemoryUsage::of_context(ctx)?
        .reserved
        .saturating_sub(base);

    let base = trimmed_baseline(ctx)?;
    op(&mut runner, Op::Run(*sizes.last().unwrap_or(&1)))?;
    op(&mut runner, Op::Sync)?;
    let largest_alone = reserved_high_above(ctx, base)?;

    let base = trimmed_baseline(ctx)?;
    for &n in sizes {
        op(&mut runner, Op::Run(n))?;
    }
    op(&mut runner, Op::Sync)?;
    let ascending = reserved_high_above(ctx, base)?;

    op(&mut runner, Op::Release)?;
    let base = trimmed_baseline(ctx)?;
    op(&mut runner, Op::Resume)?;
    for &n in sizes {
        op(&mut runner, Op::Run(n))?;
    }
    op(&mut runner, Op::Sync)?;
    let resumed = reserved_high_above(ctx, base)?;
    Ok((
        runner,
        Held {
            largest_alone,
            after_capture,
            ascending,
            resumed,
        },
    ))
}

/// The cudarc MLP (plain cudarc, cuBLAS, graph memory nodes).
fn cudarc_row(rng: &mut Rng) -> Result<Option<Row>> {
    if gpu("footprint::cudarc").is_none() {
        return Ok(None);
    }
    // SAFETY: this test's buffers are used on this stream only.
    let stream: Arc<CudaStream> = unsafe { capture_stream(0) }
        .map_err(|e| cudagraph::Error::invalid("footprint", e.to_string()))?;
    let ctx = stream.context().clone();
    let dims = MlpDims {
        d_in: 1024,
        d_hidden: 4096,
        d_out: 1024,
    };
    let model = CudarcMlp::new(&stream, dims, rng.next_u64())
        .map_err(|e| cudagraph::Error::invalid("footprint", e.to_string()))?;
    let input = |rows: usize, rng: &mut Rng| -> Result<CudaTensor> {
        let values = rng.vec(rows * dims.d_in, -1.0, 1.0);
        let slice = stream
            .clone_htod(&values)
            .map_err(cudagraph::Error::driver("upload"))?;
        CudaTensor::from_slice(slice, &[rows, dims.d_in])
    };
    let x = input(32, rng)?;
    stream
        .synchronize()
        .map_err(cudagraph::Error::driver("sync"))?;
    let peak = eager_peak(&ctx, || {
        let out = model
            .forward(&stream, &x)
            .map_err(|e| cudagraph::Error::invalid("footprint", e.to_string()))?;
        stream
            .synchronize()
            .map_err(cudagraph::Error::driver("sync"))?;
        drop(out);
        Ok(())
    })?;
    let spec = cudagraph::InputSpec::new(cudagraph::DType::F32, &[dims.d_in])?;
    let sizes = [1, 2, 4, 8, 16, 32];
    let (graphs, held) = node_held(
        &ctx,
        || model.forward_graphs(&stream, [spec]),
        &sizes,
        |graphs, op| match op {
            Op::Run(n) => {
                let x = input(n, rng)?;
                drop(graphs.run([&x])?);
                Ok(())
            }
            Op::Sync => stream
                .synchronize()
                .map_err(cudagraph::Error::driver("sync")),
            Op::Release => graphs.release_memory().map(drop),
            Op::Resume => graphs.resume(),
        },
    )?;
    assert_eq!(
        graphs.sizes(),
        sizes,
        "the MLP's sizes changed: update this test"
    );
    let (largest_nodes, node_sum) = allocation_bytes(graphs.stats());
    Ok(Some(Row {
        forward: format!(
            "cudarc MLP ({} -> {} -> {})",
            dims.d_in, dims.d_hidden, dims.d_out
        ),
        memory: "graph memory nodes",
        graphs: sizes.len(),
        eager_peak: peak,
        largest_nodes,
        node_sum,
        held,
    }))
}

/// The table over the backends this binary has (the candle ones with feature `candle`).
#[test]
#[ignore = "a measurement: run with --ignored footprint::"]
fn graph_memory_against_eager_peak() -> Result<()> {
    let mut rng = Rng(fresh_seed("footprint::graph_memory_against_eager_peak"));
    let mut rows = Vec::new();
    rows.extend(native_row(&mut rng)?);
    rows.extend(cudarc_row(&mut rng)?);
    #[cfg(feature = "candle")]
    rows.extend(candle::rows(&mut rng)?);
    if rows.is_empty() {
        return Ok(()); // no GPU: skipped with the reason printed
    }
    print(&rows);
    for r in &rows {
        assert!(
            r.eager_peak.used > 0 && r.held.largest_alone > 0 && r.held.ascending > 0,
            "{}: a figure that launches must make non-zero is 0",
            r.forward
        );
    }
    Ok(())
}

#[cfg(feature = "candle")]
mod candle {
    //! The candle decoder (bench configuration) and candle-transformers' BERT.
    use super::*;
    use candle_core::backend::BackendDevice;
    use candle_core::{DType, Device, Tensor};
    use cudagraph::InputSpec;
    use cudagraph_models::candle_decoder::{CandleDecoder, CandleDecoderConfig};

    fn err(e: impl std::fmt::Display) -> cudagraph::Error {
        cudagraph::Error::invalid("footprint", e.to_string())
    }

    pub(super) fn rows(rng: &mut Rng) -> Result<Vec<Row>> {
        let Some(dev) = crate::candle_backend::candle_device("footprint::candle") else {
            return Ok(Vec::new());
        };
        let ctx = dev.cuda_stream().context().clone();
        let cfg = CandleDecoderConfig::bench();
        let model = CandleDecoder::new(&dev, cfg).map_err(err)?;
        let u32s = |values: Vec<u32>| -> Result<Tensor> {
            Tensor::new(values.as_slice(), &Device::Cuda(dev.clone())).map_err(err)
        };
        let inputs = |b: usize, rng: &mut Rng| -> Result<[Tensor; 3]> {
            Ok([
                u32s((0..b).map(|_| rng.below(cfg.vocab) as u32).collect())?,
                u32s(
                    (0..b)
                        .map(|_| rng.below(cfg.max_positions) as u32)
                        .collect(),
                )?,
                u32s((1..=b as u32).collect())?,
            ])
        };
        let spec = || InputSpec::new(DType::U32, &[]).map_err(err);
        // The decoder's `#[cuda_graph(sizes = ...)]` (checked against the runner's below).
        let sizes = [1, 2, 4, 8, 16, 32, 64];
        let largest = 64;
        let [t, p, s] = inputs(largest, rng)?;
        dev.synchronize().map_err(err)?;
        let peak = eager_peak(&ctx, || {
            let out = model.forward(&dev, &t, &p, &s).map_err(err)?;
            dev.synchronize().map_err(err)?;
            drop(out);
            Ok(())
        })?;
        let (graphs, held) = node_held(
            &ctx,
            || {
                model
                    .forward_graphs(&dev, [spec()?, spec()?, spec()?])
                    .map_err(err)
            },
            &sizes,
            |graphs, op| match op {
                Op::Run(n) => {
                    let [t, p, s] = inputs(n, rng)?;
                    drop(graphs.run([&t, &p, &s]).map_err(err)?);
                    Ok(())
                }
                Op::Sync => dev.synchronize().map_err(err),
                Op::Release => graphs.release_memory().map(drop),
                Op::Resume => graphs.resume(),
            },
        )?;
        assert_eq!(
            graphs.sizes(),
            sizes,
            "the decoder's sizes changed: update this test"
        );
        let (largest_nodes, node_sum) = allocation_bytes(graphs.stats());
        let mut rows = vec![Row {
            forward: format!(
                "candle decoder ({} layers, hidden {})",
                cfg.layers, cfg.hidden
            ),
            memory: "graph memory nodes",
            graphs: sizes.len(),
            eager_peak: peak,
            largest_nodes,
            node_sum,
            held,
        }];
        drop(graphs);
        #[cfg(feature = "candle-transformers")]
        rows.push(bert_row(&dev, &ctx, rng)?);
        Ok(rows)
    }

    #[cfg(feature = "candle-transformers")]
    fn bert_row(
        dev: &candle_core::CudaDevice,
        ctx: &Arc<CudaContext>,
        rng: &mut Rng,
    ) -> Result<Row> {
        use cudagraph::cuda_graph;
        use cudagraph_models::candle_nn::{VarBuilder, VarMap};
        use cudagraph_models::candle_transformers::models::bert::{BertModel, Config};

        struct Bert {
            model: BertModel,
        }
        impl Bert {
            #[cuda_graph(sizes = [1, 2, 4, 8, 16, 32], batch = ids)]
            fn forward(
                &self,
                _dev: &candle_core::CudaDevice,
                ids: &Tensor,
                types: &Tensor,
            ) -> candle_core::Result<Tensor> {
                self.model.forward(ids, types, None)
            }
        }
        const SEQ: usize = 128;
        let device = Device::Cuda(dev.clone());
        let config = Config {
            vocab_size: 30522,
            hidden_size: 384,
            num_hidden_layers: 6,
            num_attention_heads: 12,
            intermediate_size: 1536,
            max_position_embeddings: 512,
            ..Config::default()
        };
        let vars = VarMap::new();
        let bert = Bert {
            model: BertModel::load(VarBuilder::from_varmap(&vars, DType::F32, &device), &config)
                .map_err(err)?,
        };
        let batch = |n: usize, rng: &mut Rng| -> Result<[Tensor; 2]> {
            let ids: Vec<u32> = (0..n * SEQ).map(|_| rng.below(30522) as u32).collect();
            let types: Vec<u32> = (0..n * SEQ).map(|_| rng.below(2) as u32).collect();
            Ok([
                Tensor::new(ids.as_slice(), &device)
                    .and_then(|t| t.reshape((n, SEQ)))
                    .map_err(err)?,
                Tensor::new(types.as_slice(), &device)
                    .and_then(|t| t.reshape((n, SEQ)))
                    .map_err(err)?,
            ])
        };
        let spec = || InputSpec::new(DType::U32, &[SEQ]).map_err(err);
        // `Bert::forward`'s sizes (checked against the runner's below).
        let sizes = [1, 2, 4, 8, 16, 32];
        let [ids, types] = batch(32, rng)?;
        dev.synchronize().map_err(err)?;
        let peak = eager_peak(ctx, || {
            let out = bert.forward(dev, &ids, &types).map_err(err)?;
            dev.synchronize().map_err(err)?;
            drop(out);
            Ok(())
        })?;
        let (graphs, held) = node_held(
            ctx,
            || bert.forward_graphs(dev, [spec()?, spec()?]).map_err(err),
            &sizes,
            |graphs, op| match op {
                Op::Run(n) => {
                    let [ids, types] = batch(n, rng)?;
                    drop(graphs.run([&ids, &types]).map_err(err)?);
                    Ok(())
                }
                Op::Sync => dev.synchronize().map_err(err),
                Op::Release => graphs.release_memory().map(drop),
                Op::Resume => graphs.resume(),
            },
        )?;
        assert_eq!(graphs.sizes(), sizes);
        let (largest_nodes, node_sum) = allocation_bytes(graphs.stats());
        Ok(Row {
            forward: format!(
                "candle-transformers BERT ({} layers, hidden 384, 128 tokens)",
                config.num_hidden_layers
            ),
            memory: "graph memory nodes",
            graphs: sizes.len(),
            eager_peak: peak,
            largest_nodes,
            node_sum,
            held,
        })
    }
}
