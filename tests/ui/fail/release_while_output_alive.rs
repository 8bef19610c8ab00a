// `release_memory` unmaps the pool an output lives in: it can't be called while one is alive.
use cudagraph::{cuda_graph, DType, InputSpec, Result, Runtime, Tensor};

#[cuda_graph(sizes = [1, 2, 4])]
fn forward(rt: &Runtime, x: &Tensor) -> Result<Tensor> {
    rt.duplicate(x)
}

fn main() -> Result<()> {
    let rt = Runtime::new(0)?;
    let mut graphs = forward_graphs(&rt, [InputSpec::new(DType::F32, &[4])?])?;
    let x = rt.zeros(&[2, 4], DType::F32)?;
    let out = graphs.run([&x])?;
    graphs.release_memory()?;
    println!("{:?}", rt.download::<f32>(&out)?);
    Ok(())
}
