use cudagraph::{cuda_graph, DType, InputSpec, Result, Runtime, Tensor};

struct M {
    w: Tensor,
}

impl M {
    #[cuda_graph(sizes = [1, 2, 4])]
    fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
        let _ = &self.w;
        rt.duplicate(x)
    }
}

fn main() -> Result<()> {
    let rt = Runtime::new(0)?;
    let mut m = M { w: rt.zeros(&[4], DType::F32)? };
    let mut graphs = m.forward_graphs(&rt, [InputSpec::new(DType::F32, &[4])?])?;
    m.w = rt.zeros(&[4], DType::F32)?; // the graphs point at the old weights
    let x = rt.zeros(&[2, 4], DType::F32)?;
    graphs.run([&x])?;
    Ok(())
}
