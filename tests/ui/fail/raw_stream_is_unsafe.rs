// The raw cudarc stream and context are `unsafe` to take: cudarc's safe API on them is not
// ordered with the runtime's own work (event tracking is off).
use cudagraph::{Result, Runtime};

fn main() -> Result<()> {
    let rt = Runtime::new(0)?;
    let stream = rt.stream();
    let context = rt.context();
    println!("{stream:?} {context:?}");
    Ok(())
}
