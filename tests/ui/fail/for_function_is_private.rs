// A runner can't be retyped as another function's (issue 24, item 5: on e876914
// `Runner::for_function` was public, only hidden from the docs, so the refresh of `forward_b`
// took `forward_a`'s runner).
use cudagraph::{InputSpec, Result, Runtime, Tensor, cuda_graph};

struct M;

impl M {
    #[cuda_graph(sizes = [1, 2])]
    fn forward_a(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
        rt.duplicate(x)
    }

    #[cuda_graph(sizes = [1, 2])]
    fn forward_b(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
        rt.duplicate(x)
    }
}

fn swap(m: &M, rt: &Runtime, spec: InputSpec) -> Result<()> {
    let runner = m.forward_a_graphs(rt, [spec])?;
    let _ = m.forward_b_graphs_refresh(rt, runner.for_function())?;
    Ok(())
}

fn main() {
    let _ = swap;
}
