// `<fn>_graph_memory` and `<fn>_graphs_refresh`, generated next to `<fn>_graphs`.
use cudagraph::{
    DType, InputSpec, MemoryEstimate, RefreshReport, Result, Runner, Runtime, Tensor, cuda_graph,
};

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub scale: u32,
}

/// Stands for a model; `version` for its weights.
struct M {
    version: u32,
}

impl M {
    #[cuda_graph(sizes = [1, 2, 4])]
    pub fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
        let _ = self.version;
        rt.duplicate(x)
    }

    #[cuda_graph(sizes = [1, 8..=32 step 8], static_args = [cfg], capture = lazy)]
    fn decode(&self, rt: &Runtime, x: &Tensor, cfg: &Config) -> Result<Tensor> {
        let _ = (self.version, cfg.scale);
        rt.duplicate(x)
    }
}

#[cuda_graph(sizes = [1, 2])]
fn step(rt: &Runtime, x: &Tensor) -> Result<Tensor> {
    rt.duplicate(x)
}

// The estimate takes `forward_graphs`'s arguments and borrows nothing past the call.
fn estimate(m: &M, rt: &Runtime, specs: [InputSpec; 1], cfg: Config) -> Result<usize> {
    let a: MemoryEstimate = m.forward_graph_memory(rt, specs)?;
    let b: MemoryEstimate = m.decode_graph_memory(rt, specs, cfg)?;
    let c: MemoryEstimate = step_graph_memory(rt, specs)?;
    Ok(a.total() + b.total() + c.total())
}

// The refreshed runner borrows the new model, not the one `runner` was captured from; it keeps
// the statics captured in `runner`.
fn refresh<'n>(
    m: &M,
    m2: &'n M,
    rt: &'n Runtime,
    specs: [InputSpec; 1],
) -> Result<(Runner<'n, 1, ()>, Runner<'n, 1, (Config,)>, RefreshReport)> {
    let runner = m.forward_graphs(rt, specs)?;
    let decode = m.decode_graphs(rt, specs, Config { scale: 2 })?;
    let stepper = step_graphs(rt, specs)?;
    let (runner, report) = m2.forward_graphs_refresh(rt, runner)?;
    let (decode, _): (_, RefreshReport) = m2.decode_graphs_refresh(rt, decode)?;
    let (stepper, _) = step_graphs_refresh(rt, stepper)?;
    let _: Runner<'n, 1, ()> = stepper.into_untyped();
    Ok((runner.into_untyped(), decode.into_untyped(), report))
}

fn main() -> Result<()> {
    let _ = (estimate, refresh);
    // Type-checks only where there is no GPU (trybuild runs pass tests on the build machine).
    let Ok(rt) = Runtime::new(0) else {
        return Ok(());
    };
    let specs = [InputSpec::new(DType::F32, &[4])?];
    let m = M { version: 1 };
    let bytes = m.forward_graph_memory(&rt, specs)?.total();
    let runner = m.forward_graphs(&rt, specs)?;
    assert!(runner.pool_bytes() <= bytes);
    let m2 = M { version: 2 };
    let (runner, report) = m2.forward_graphs_refresh(&rt, runner)?;
    // The old runner was consumed: the old model can go while the refreshed runner lives.
    drop(m);
    assert_eq!(
        report.updated_in_place + report.reinstantiated,
        runner.sizes().len()
    );
    Ok(())
}
