// `capture = lazy`: the runner is built without capturing; each size is captured on first use.
use cudagraph::{FnRunner, InputSpec, Result, Runner, Runtime, Tensor, cuda_graph};

#[derive(Clone, PartialEq)]
pub struct Config {
    pub scale: f32,
}

struct M;

impl M {
    #[cuda_graph(sizes = [1, 2, 4, 8..=64 step 8], static_args = [cfg], capture = lazy)]
    pub fn forward(&self, rt: &Runtime, x: &Tensor, cfg: &Config) -> Result<Tensor> {
        let _ = (rt, cfg.scale);
        rt.duplicate(x)
    }
}

/// `capture = init` is the default, spelled out.
#[cuda_graph(capture = init, sizes = [1, 2])]
pub fn step(rt: &Runtime, hidden: &Tensor) -> Result<Tensor> {
    let _ = rt;
    rt.duplicate(hidden)
}

// Type-checks the generated API without running anything on a GPU.
fn build<'m>(
    m: &'m M,
    rt: &'m Runtime,
    inputs: [InputSpec; 1],
    cfg: Config,
) -> Result<Runner<'m, 1, (Config,)>> {
    m.forward_graphs(rt, inputs, cfg).map(FnRunner::into_untyped)
}

fn build_step(rt: &Runtime, inputs: [InputSpec; 1]) -> Result<Runner<'_, 1, ()>> {
    step_graphs(rt, inputs).map(FnRunner::into_untyped)
}

/// `capture = background`: built at once, serving eagerly; graphs captured between calls.
#[cuda_graph(sizes = [1, 2, 4], capture = background)]
pub fn served(rt: &Runtime, x: &Tensor) -> Result<Tensor> {
    rt.duplicate(x)
}

fn serve_while_capturing(rt: &Runtime, inputs: [InputSpec; 1], x: &Tensor) -> Result<usize> {
    let mut graphs = served_graphs(rt, inputs)?;
    drop(graphs.run([x])?); // eager, then its size is captured
    graphs.capture_pending(std::time::Duration::from_millis(50))?;
    Ok(graphs.pending_captures())
}

fn main() {
    let _ = (build, build_step, M::forward, step, serve_while_capturing);
}
