use cudagraph::{FnRunner, InputSpec, Result, Runner, Runtime, Tensor, cuda_graph};

/// A free function is captured too; the generated `step_graphs` is a sibling.
#[cuda_graph(sizes = [1, 2, 4])]
pub fn step(rt: &Runtime, hidden: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let _ = (rt, bias);
    rt.duplicate(hidden)
}

fn build(rt: &Runtime, inputs: [InputSpec; 2]) -> Result<Runner<'_, 2, ()>> {
    step_graphs(rt, inputs).map(FnRunner::into_untyped)
}

fn main() {
    let _ = (build, step);
}
