use cudagraph::{cuda_graph, DType, InputSpec, Result, Runtime, Tensor};

struct M;

impl M {
    #[cuda_graph(sizes = [1, 2, 4], static_args = [eps])]
    fn forward(&self, rt: &Runtime, x: &Tensor, eps: f32) -> Result<Tensor> {
        let _ = eps;
        rt.duplicate(x)
    }
}

fn main() -> Result<()> {
    let rt = Runtime::new(0)?;
    let m = M;
    let mut graphs = m.forward_graphs(&rt, [InputSpec::new(DType::F32, &[4])?], 1e-5)?;
    let x = rt.zeros(&[2, 4], DType::F32)?;
    let _ = graphs.run([&x])?; // statics: the call is run_with([&x], &(1e-5,))
    Ok(())
}
