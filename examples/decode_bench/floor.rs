//! The memory floor of a decode step, and the cost growth of capture with the size count.
//!
//! * [`memory_floor_us`]: a kernel that only streams the bytes the batch-1 step reads (its
//!   weights), timed the way a replay is (launch, synchronize, host wall time, median): no
//!   decode step on this GPU can be faster.
//! * [`growth`]: capture of 35, 67 and 512 sizes, each by a fresh runner: per-graph capture time
//!   and pool bytes, to show that neither grows with the number of sizes.

use std::time::Instant;

use cudagraph::cudarc::driver::{LaunchConfig, PushKernelArg};
use cudagraph::{DType, Error, GraphPlan, KernelModule, Result, Runner, Runtime};
use cudagraph_models::llama::{Llama, LlamaConfig};

use crate::common::median;

/// A read-only streaming kernel: every thread sums 16-byte words of `data` (four loads in
/// flight per iteration) and each block writes one partial sum, so nothing is optimised away.
static STREAM: KernelModule = KernelModule {
    name: "decode_bench_stream",
    source: r#"
extern "C" __global__ void stream_read(const uint4* __restrict__ data, unsigned long long words,
                                       unsigned int* __restrict__ partial) {
    unsigned int acc = 0u;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i + 3ull * stride < words; i += 4ull * stride) {
        const uint4 a = data[i];
        const uint4 b = data[i + stride];
        const uint4 c = data[i + 2ull * stride];
        const uint4 d = data[i + 3ull * stride];
        acc += a.x ^ b.y ^ c.z ^ d.w;
        acc += a.y ^ b.z ^ c.w ^ d.x;
    }
    for (; i < words; i += stride) {
        acc += data[i].x;
    }
    if (acc == 0x9E3779B9u) {
        partial[blockIdx.x] = acc;  // almost never taken; keeps the loads live
    }
}

extern "C" __global__ void empty(const uint4* a, unsigned long long n, unsigned int* b) {}
"#,
    functions: &["stream_read", "empty"],
};

/// Median wall time (µs) of streaming `bytes` through [`STREAM`], launch + synchronize.
pub fn memory_floor_us(rt: &Runtime, bytes: usize) -> Result<f64> {
    let words = bytes / 16;
    let data = rt.zeros(&[words * 8], DType::BF16)?;
    let blocks = rt.sm_count() * 8;
    let partial = rt.zeros(&[blocks], DType::F32)?;
    let func = rt.function(&STREAM, "stream_read")?;
    let cfg = LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let (pd, pp, n) = (data.device_ptr(), partial.device_ptr(), words as u64);
    // SAFETY: the raw stream only enqueues this kernel after the runtime's earlier work; the
    // kernel reads `words` 16-byte words of `data` (allocated with exactly that many) and writes
    // at most `partial[blockIdx.x]` (`blocks` floats); both outlive the synchronize below.
    let stream = unsafe { rt.stream() };
    let launch = || -> Result<()> {
        let mut b = stream.launch_builder(&func);
        b.arg(&pd).arg(&n).arg(&pp);
        // SAFETY: the arguments match `stream_read(const uint4*, unsigned long long, unsigned
        // int*)`; the extents are as the block above says.
        unsafe { b.launch(cfg) }.map_err(Error::driver("cuLaunchKernel"))?;
        Ok(())
    };
    for _ in 0..3 {
        launch()?;
    }
    rt.synchronize()?;
    let mut samples = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        launch()?;
        rt.synchronize()?;
        samples.push(t.elapsed().as_secs_f64());
    }
    drop((data, partial));
    Ok(median(samples) * 1e6)
}

/// One row of the growth table.
pub struct GrowthRow {
    /// Sizes captured.
    pub sizes: usize,
    /// The largest size.
    pub largest: usize,
    /// Wall time of the whole capture.
    pub capture_s: f64,
    /// Pool bytes after the capture.
    pub pool_bytes: usize,
    /// What the largest graph alone needs.
    pub largest_graph_bytes: usize,
}

/// Captures the decoder for 35 sizes (up to 256), 67 (vLLM's former default, up to 512) and
/// 512 (every size up to 512), each by a fresh runner on one model with a 512-slot cache.
pub fn growth(rt: &Runtime, cfg: &LlamaConfig) -> Result<Vec<GrowthRow>> {
    let mut cfg = cfg.clone();
    cfg.cache_slots = cfg.cache_slots.max(512);
    let model = Llama::random(rt, cfg.clone(), 0)?;
    let specs = cfg.input_specs()?;
    let steps =
        |max: usize| -> Vec<usize> { [1, 2, 4].into_iter().chain((8..=max).step_by(8)).collect() };
    let mut rows = Vec::new();
    for sizes in [steps(256), steps(512), (1..=512).collect::<Vec<_>>()] {
        rt.synchronize()?;
        let started = Instant::now();
        let plan = GraphPlan::new("forward", &sizes, 0)?;
        let runner = Runner::capture(rt, plan, specs, (), |rt, [t, p], ()| {
            model.forward(rt, t, p)
        })?;
        rt.synchronize()?;
        let capture_s = started.elapsed().as_secs_f64();
        let stats = runner.stats();
        rows.push(GrowthRow {
            sizes: sizes.len(),
            largest: sizes.last().copied().unwrap_or(0),
            capture_s,
            pool_bytes: stats.pool_bytes,
            largest_graph_bytes: stats.largest_graph_need(),
        });
        drop(runner);
        rt.release_cached_memory()?;
    }
    Ok(rows)
}

/// Median host time (µs) of enqueueing one empty kernel (three arguments), in rounds of ten
/// launches after a synchronize (the first of a round finds the GPU idle): the launch cost that
/// `run()` pays for its input copy, besides the graph launch.
pub fn kernel_launch_host_us(rt: &Runtime) -> Result<f64> {
    let func = rt.function(&STREAM, "empty")?;
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (32, 1, 1),
        shared_mem_bytes: 0,
    };
    let (p, n) = (0u64, 0u64);
    // SAFETY: the raw stream only enqueues the empty kernel, which touches no memory.
    let stream = unsafe { rt.stream() };
    let mut samples = Vec::new();
    for round in 0..20 {
        rt.synchronize()?;
        for _ in 0..10 {
            let mut b = stream.launch_builder(&func);
            b.arg(&p).arg(&n).arg(&p);
            let t = Instant::now();
            // SAFETY: the arguments match `empty(const uint4*, unsigned long long, unsigned
            // int*)`, which reads and writes nothing.
            unsafe { b.launch(cfg) }.map_err(Error::driver("cuLaunchKernel"))?;
            if round > 0 {
                samples.push(t.elapsed().as_secs_f64());
            }
        }
    }
    rt.synchronize()?;
    Ok(median(samples) * 1e6)
}
