// A graph borrows its runtime (stream, cuBLAS workspace, kernel modules): it can't replay after
// the runtime is gone.
use cudagraph::{DType, Result, Runtime};

fn main() -> Result<()> {
    let graph = {
        let rt = Runtime::new(0)?;
        let dst = rt.zeros(&[4], DType::F32)?;
        rt.capture(move |rt| rt.fill_bytes(&dst, 0))?
    };
    graph.replay()?;
    Ok(())
}
