// `runner.run(..)?.clone()`, what a newcomer writes to keep a copy, would alias pool memory the
// next replay overwrites: it does not compile (use `Output::to_owned`).
use cudagraph::{cuda_graph, DType, InputSpec, Result, Runtime, Tensor};

#[cuda_graph(sizes = [1, 2, 4])]
fn forward(rt: &Runtime, x: &Tensor) -> Result<Tensor> {
    rt.duplicate(x)
}

fn main() -> Result<()> {
    let rt = Runtime::new(0)?;
    let mut graphs = forward_graphs(&rt, [InputSpec::new(DType::F32, &[4])?])?;
    let x = rt.zeros(&[2, 4], DType::F32)?;
    let kept = graphs.run([&x])?.clone();
    let next = graphs.run([&x])?;
    println!("{:?} {:?}", kept.shape(), next.shape());
    Ok(())
}
