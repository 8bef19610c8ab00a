// A tensor is not `Clone`: an owned second handle would outlive the memory a graph rewrites or
// `release_memory` unmaps. A copy is explicit: `rt.duplicate(&t)`.
use cudagraph::{DType, Result, Runtime};

fn main() -> Result<()> {
    let rt = Runtime::new(0)?;
    let t = rt.zeros(&[4], DType::F32)?;
    let alias = t.clone();
    println!("{:?}", alias.shape());
    Ok(())
}
