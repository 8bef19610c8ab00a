// An output can't be turned into an owned alias of pool memory through the backend: the
// runner's operations on tensors (`narrow` among them) are in a crate-private trait, so
// `<Native as Backend>::narrow` does not exist for users (found by the review of a714c86).
use cudagraph::{cuda_graph, Backend, DType, InputSpec, Native, Result, Runtime, Tensor};

#[cuda_graph(sizes = [1, 2, 4])]
fn forward(rt: &Runtime, x: &Tensor) -> Result<Tensor> {
    rt.duplicate(x)
}

fn demo() -> Result<()> {
    let rt = Runtime::new(0)?;
    let mut graphs = forward_graphs(&rt, [InputSpec::new(DType::F32, &[4])?])?;
    let x = rt.zeros(&[2, 4], DType::F32)?;
    let kept: Tensor = <Native as Backend>::narrow(&*graphs.run([&x])?, 2)?; // owned alias
    let next = graphs.run([&x])?; // rewrites what `kept` views
    println!("{:?} {:?}", kept.shape(), next.shape());
    drop(next);
    drop(graphs); // `kept` outlives the runner too
    println!("{:?}", kept.shape());
    Ok(())
}

// Compiles is the point; not run (no GPU on the build machine).
fn main() {
    if std::env::args().count() > 99 {
        let _ = demo();
    }
}
