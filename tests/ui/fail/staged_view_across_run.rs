// A staged view (a static input buffer's rows) held across the staged run would let the caller
// write the buffer while the graph reads it, or after: `run` consumes the staging, which the
// view borrows.
use cudagraph::{cuda_graph, DType, InputSpec, Result, Runtime, Tensor};

#[cuda_graph(sizes = [1, 2, 4])]
fn forward(rt: &Runtime, x: &Tensor) -> Result<Tensor> {
    rt.duplicate(x)
}

fn main() -> Result<()> {
    let rt = Runtime::new(0)?;
    let mut graphs = forward_graphs(&rt, [InputSpec::new(DType::F32, &[4])?])?;
    let staged = graphs.stage(2)?;
    let [view] = staged.inputs();
    let out = staged.run()?;
    rt.upload_into(&[0f32; 8], view)?;
    println!("{:?}", out.shape());
    Ok(())
}
