// While a call is staged, the runner can't run another: that run would copy its inputs over the
// staged rows.
use cudagraph::{cuda_graph, DType, InputSpec, Result, Runtime, Tensor};

#[cuda_graph(sizes = [1, 2, 4])]
fn forward(rt: &Runtime, x: &Tensor) -> Result<Tensor> {
    rt.duplicate(x)
}

fn main() -> Result<()> {
    let rt = Runtime::new(0)?;
    let mut graphs = forward_graphs(&rt, [InputSpec::new(DType::F32, &[4])?])?;
    let x = rt.zeros(&[2, 4], DType::F32)?;
    let staged = graphs.stage(2)?;
    let other = graphs.run([&x])?;
    let out = staged.run()?;
    println!("{:?} {:?}", other.shape(), out.shape());
    Ok(())
}
