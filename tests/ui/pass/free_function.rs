use cudagraph::{InputSpec, Result, Runner, Runtime, Tensor, cuda_graph};

/// A free function is captured too; the generated `step_graphs` is a sibling.
#[cuda_graph(sizes = [1, 2, 4])]
pub fn step(rt: &Runtime, hidden: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let _ = (rt, bias);
    Ok(hidden.clone())
}

fn build(rt: &Runtime, inputs: [InputSpec; 2]) -> Result<Runner<'_, 2, ()>> {
    step_graphs(rt, inputs)
}

fn main() {
    let _ = (build, step);
}
