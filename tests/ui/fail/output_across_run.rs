use cudagraph::{cuda_graph, DType, InputSpec, Result, Runtime, Tensor};

struct M;

impl M {
    #[cuda_graph(sizes = [1, 2, 4])]
    fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
        rt.duplicate(x)
    }
}

fn main() -> Result<()> {
    let rt = Runtime::new(0)?;
    let m = M;
    let mut graphs = m.forward_graphs(&rt, [InputSpec::new(DType::F32, &[4])?])?;
    let x = rt.zeros(&[2, 4], DType::F32)?;
    let first = graphs.run([&x])?;
    let second = graphs.run([&x])?; // replays into the memory `first` views
    println!("{:?} {:?}", first.shape(), second.shape());
    Ok(())
}
