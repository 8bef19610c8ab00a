//! Issue 30's table: how much device memory each backend's graphs hold against what the same
//! forward needs eagerly. For each forward: the eager peak of the largest size (the
//! stream-ordered pool's `USED_MEM_HIGH`, reset right before), the largest graph alone, the
//! sum of every graph's allocations, and what is held once every size has replayed: the pool
//! (cudagraph's tensors: physical, mapped pages) or the driver's reserved graph memory (graph
//! memory nodes: candle, plain cudarc; physical, measured from a trimmed baseline). A
//! measurement, run with `--ignored footprint::`; it asserts only that every figure was read.

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
    eager_peak: u64,
    largest_alone: u64,
    node_sum: u64,
    held: u64,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn print(rows: &[Row]) {
    println!(
        "\n| forward | graph memory | graphs | eager peak, largest size MiB | largest graph alone MiB | sum of graphs MiB | held, every size replayed MiB | held / largest alone | held / eager peak |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let ratio = |a: u64, b: u64| {
            if b == 0 {
                "-".to_string()
            } else {
                format!("{:.2}x", a as f64 / b as f64)
            }
        };
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
            r.forward,
            r.memory,
            r.graphs,
            mib(r.eager_peak),
            mib(r.largest_alone),
            mib(r.node_sum),
            mib(r.held),
            ratio(r.held, r.largest_alone),
            ratio(r.held, r.eager_peak),
        );
    }
}

/// The eager peak of `f` on `ctx`'s device: the pool's used high-water mark above what was in
/// use before, `f` synchronized by the caller's closure.
fn eager_peak(ctx: &Arc<CudaContext>, f: impl FnOnce() -> Result<()>) -> Result<u64> {
    let before = StreamPoolUsage::of_context(ctx)?;
    StreamPoolUsage::reset_high(ctx)?;
    f()?;
    let after = StreamPoolUsage::of_context(ctx)?;
    Ok(after.used_high.saturating_sub(before.used))
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
    let sizes = graphs.sizes().to_vec();
    for &n in &sizes {
        let (t, p) = draw_decode_inputs(&rt, rng, &cfg, n)?;
        drop(graphs.run([&t, &p])?);
    }
    rt.synchronize()?;
    let stats = graphs.stats();
    Ok(Some(Row {
        forward: "native decoder (Qwen3-0.6B-shaped)".into(),
        memory: "pool",
        graphs: sizes.len(),
        eager_peak: peak,
        largest_alone: alone.pool_bytes as u64,
        node_sum: stats.sizes.iter().map(|s| s.pool_need as u64).sum(),
        held: stats.pool_bytes as u64,
    }))
}

/// A node-mode runner's figures: every size replayed once from a trimmed baseline; `held` is
/// the driver's reserved high-water mark above it.
fn node_figures(
    ctx: &Arc<CudaContext>,
    needs: &[usize],
    replay_all: impl FnOnce() -> Result<()>,
) -> Result<(u64, u64, u64)> {
    let largest = needs.iter().copied().max().unwrap_or(0) as u64;
    let sum = needs.iter().map(|&n| n as u64).sum();
    GraphMemoryUsage::trim(ctx)?;
    let before = GraphMemoryUsage::of_context(ctx)?;
    GraphMemoryUsage::reset_high(ctx)?;
    replay_all()?;
    let after = GraphMemoryUsage::of_context(ctx)?;
    Ok((
        largest,
        sum,
        after.reserved_high.saturating_sub(before.reserved),
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
    let mut graphs = model.forward_graphs(&stream, [spec])?;
    let sizes = graphs.sizes().to_vec();
    let needs: Vec<usize> = graphs.stats().sizes.iter().map(|s| s.pool_need).collect();
    let (largest, sum, held) = node_figures(&ctx, &needs, || {
        for &n in &sizes {
            let x = input(n, rng)?;
            drop(graphs.run([&x])?);
        }
        stream
            .synchronize()
            .map_err(cudagraph::Error::driver("sync"))
    })?;
    Ok(Some(Row {
        forward: format!(
            "cudarc MLP ({} -> {} -> {})",
            dims.d_in, dims.d_hidden, dims.d_out
        ),
        memory: "graph memory nodes",
        graphs: sizes.len(),
        eager_peak: peak,
        largest_alone: largest,
        node_sum: sum,
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
            r.eager_peak > 0 && r.held > 0 && r.largest_alone > 0,
            "{}: a figure is 0",
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
        let mut graphs = model
            .forward_graphs(&dev, [spec()?, spec()?, spec()?])
            .map_err(err)?;
        let sizes = graphs.sizes().to_vec();
        let largest = *sizes.last().unwrap_or(&1);
        let [t, p, s] = inputs(largest, rng)?;
        dev.synchronize().map_err(err)?;
        let peak = eager_peak(&ctx, || {
            let out = model.forward(&dev, &t, &p, &s).map_err(err)?;
            dev.synchronize().map_err(err)?;
            drop(out);
            Ok(())
        })?;
        let needs: Vec<usize> = graphs.stats().sizes.iter().map(|s| s.pool_need).collect();
        let (alone, sum, held) = node_figures(&ctx, &needs, || {
            for &n in &sizes {
                let [t, p, s] = inputs(n, rng)?;
                drop(graphs.run([&t, &p, &s]).map_err(err)?);
            }
            dev.synchronize().map_err(err)
        })?;
        let mut rows = vec![Row {
            forward: format!(
                "candle decoder ({} layers, hidden {})",
                cfg.layers, cfg.hidden
            ),
            memory: "graph memory nodes",
            graphs: sizes.len(),
            eager_peak: peak,
            largest_alone: alone,
            node_sum: sum,
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
        let mut graphs = bert.forward_graphs(dev, [spec()?, spec()?]).map_err(err)?;
        let sizes = graphs.sizes().to_vec();
        let [ids, types] = batch(*sizes.last().unwrap_or(&1), rng)?;
        dev.synchronize().map_err(err)?;
        let peak = eager_peak(ctx, || {
            let out = bert.forward(dev, &ids, &types).map_err(err)?;
            dev.synchronize().map_err(err)?;
            drop(out);
            Ok(())
        })?;
        let needs: Vec<usize> = graphs.stats().sizes.iter().map(|s| s.pool_need).collect();
        let (alone, sum, held) = node_figures(ctx, &needs, || {
            for &n in &sizes {
                let [ids, types] = batch(n, rng)?;
                drop(graphs.run([&ids, &types]).map_err(err)?);
            }
            dev.synchronize().map_err(err)
        })?;
        Ok(Row {
            forward: format!(
                "candle-transformers BERT ({} layers, hidden 384, 128 tokens)",
                config.num_hidden_layers
            ),
            memory: "graph memory nodes",
            graphs: sizes.len(),
            eager_peak: peak,
            largest_alone: alone,
            node_sum: sum,
            held,
        })
    }
}
