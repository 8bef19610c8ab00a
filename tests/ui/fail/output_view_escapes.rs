// A view of an output (`narrow_rows`, `reshape`) borrows the output, so it can't outlive it
// either: reading it after the next replay does not compile.
use cudagraph::{cuda_graph, DType, InputSpec, Result, Runtime, Tensor};

#[cuda_graph(sizes = [1, 2, 4])]
fn forward(rt: &Runtime, x: &Tensor) -> Result<Tensor> {
    rt.duplicate(x)
}

fn main() -> Result<()> {
    let rt = Runtime::new(0)?;
    let mut graphs = forward_graphs(&rt, [InputSpec::new(DType::F32, &[4])?])?;
    let x = rt.zeros(&[2, 4], DType::F32)?;
    let row = {
        let out = graphs.run([&x])?;
        out.narrow_rows(0, 1)?
    };
    let next = graphs.run([&x])?;
    println!("{:?} {:?}", row.shape(), next.shape());
    Ok(())
}
