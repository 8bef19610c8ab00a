use cudagraph::{cuda_graph, DType, InputSpec, Result, Runtime, Tensor};

struct M;

impl M {
    #[cuda_graph(sizes = [1, 2])]
    fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
        rt.duplicate(x)
    }
}

fn main() -> Result<()> {
    let rt = Runtime::new(0)?;
    let m = M;
    let graphs = m.forward_graphs(&rt, [InputSpec::new(DType::F32, &[4])?])?;
    // Graph objects are not thread-safe (NVIDIA): a runner stays on the thread of its runtime.
    std::thread::scope(|s| {
        s.spawn(move || drop(graphs));
    });
    Ok(())
}
