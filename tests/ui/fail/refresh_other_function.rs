use cudagraph::{InputSpec, Result, Runtime, Tensor, cuda_graph};

struct M;

impl M {
    #[cuda_graph(sizes = [1, 2])]
    fn forward_a(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
        let _ = rt;
        rt.duplicate(x)
    }

    #[cuda_graph(sizes = [1, 2])]
    fn forward_b(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
        let _ = rt;
        rt.duplicate(x)
    }
}

fn swap(m: &M, rt: &Runtime, spec: InputSpec) -> Result<()> {
    let runner = m.forward_a_graphs(rt, [spec])?;
    // A runner of `forward_a` holds graphs of `forward_a`: refreshing it with
    // `forward_b` would swap the function behind the runner's back.
    let _ = m.forward_b_graphs_refresh(rt, runner)?;
    Ok(())
}

fn main() {
    let _ = (swap, M::forward_a, M::forward_b);
}
