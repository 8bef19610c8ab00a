//! The driver floor: capture + instantiate + upload of graphs holding only empty kernels, as many
//! graphs and kernel nodes as our forward has: the best any graph tool could do on this driver.
//!
//! ```text
//! cargo run --release --example driver_floor -- [--graphs 35] [--nodes 284] [--json FILE]
//! ```

use std::process::ExitCode;
use std::time::Instant;

use cudagraph::cudarc::driver::{LaunchConfig, PushKernelArg, sys};
use cudagraph::{DType, KernelModule, Result, Runtime};

static EMPTY: KernelModule = KernelModule {
    name: "driver_floor",
    source: r#"extern "C" __global__ void empty(const void* a, void* b, int n, float x) {}"#,
    functions: &["empty"],
};

fn main() -> ExitCode {
    let mut graphs = 35usize;
    let mut nodes = 284usize;
    let mut json = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        let parsed = match (arg.as_str(), &value) {
            ("--graphs", Some(v)) => v.parse().map(|v| graphs = v).is_ok(),
            ("--nodes", Some(v)) => v.parse().map(|v| nodes = v).is_ok(),
            ("--json", Some(v)) => {
                json = Some(v.clone());
                true
            }
            _ => false,
        };
        if !parsed {
            eprintln!("usage: driver_floor [--graphs N] [--nodes N] [--json FILE]");
            return ExitCode::from(2);
        }
    }
    let rt = match Runtime::new(0) {
        Ok(rt) => rt,
        Err(e) => {
            println!("driver_floor: no GPU available ({e}); nothing to measure.");
            return ExitCode::from(1);
        }
    };
    match run(&rt, graphs, nodes, json) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("driver_floor failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(rt: &Runtime, graphs: usize, nodes: usize, json: Option<String>) -> Result<()> {
    let f = rt.function(&EMPTY, "empty")?;
    let a = rt.zeros(&[256], DType::F32)?;
    let (pa, pb, n, x) = (a.device_ptr(), a.device_ptr(), 256i32, 1.0f32);
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the raw stream measures the driver's own capture: the kernel touches no memory
    // and `a`, whose address it is given, outlives every graph (they are dropped first).
    let stream = unsafe { rt.stream() };
    let launch = || -> Result<()> {
        let mut b = stream.launch_builder(&f);
        b.arg(&pa).arg(&pb).arg(&n).arg(&x);
        // SAFETY: the kernel takes (const void*, void*, int, float), matching the four
        // arguments, and touches no memory.
        unsafe { b.launch(cfg) }.map_err(cudagraph::Error::driver("cuLaunchKernel"))?;
        Ok(())
    };
    launch()?; // module load, outside the timing
    rt.synchronize()?;
    let mut kept = Vec::with_capacity(graphs);
    let (mut record, mut instantiate, mut upload) = (0f64, 0f64, 0f64);
    let started = Instant::now();
    for _ in 0..graphs {
        let t = Instant::now();
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(cudagraph::Error::driver("cuStreamBeginCapture"))?;
        for _ in 0..nodes {
            launch()?;
        }
        record += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let graph = stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(cudagraph::Error::driver("cuStreamEndCapture"))?
            .ok_or_else(|| cudagraph::Error::invalid("driver_floor", "empty capture"))?;
        instantiate += t.elapsed().as_secs_f64();
        let t = Instant::now();
        graph
            .upload()
            .map_err(cudagraph::Error::driver("cuGraphUpload"))?;
        upload += t.elapsed().as_secs_f64();
        kept.push(graph);
    }
    rt.synchronize()?;
    let total = started.elapsed().as_secs_f64();
    println!(
        "driver floor: {graphs} graphs x {nodes} empty kernel nodes: {total:.3} s (record {record:.3} s, end capture + instantiate {instantiate:.3} s, upload {upload:.3} s)"
    );
    if let Some(path) = json {
        let body = format!(
            "{{\n  \"graphs\": {graphs},\n  \"nodes\": {nodes},\n  \"capture_s\": {total},\n  \"record_s\": {record},\n  \"instantiate_s\": {instantiate},\n  \"upload_s\": {upload}\n}}\n"
        );
        std::fs::write(&path, body)
            .map_err(|e| cudagraph::Error::invalid("--json", format!("{path}: {e}")))?;
    }
    Ok(())
}
