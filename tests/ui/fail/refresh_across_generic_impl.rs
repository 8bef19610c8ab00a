// In a generic impl every instance is its own function: `Model<String>`'s refresh does not
// take `Model<u8>`'s runner (issue 24, item 5: on e876914 both had one identity, as the
// macro sees the method, not the impl's parameters).
use std::marker::PhantomData;

use cudagraph::{InputSpec, Result, Runtime, Tensor, cuda_graph};

struct Model<T> {
    _kind: PhantomData<T>,
}

impl<T> Model<T> {
    #[cuda_graph(sizes = [1, 2])]
    fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
        rt.duplicate(x)
    }
}

fn swap(bytes: &Model<u8>, text: &Model<String>, rt: &Runtime, spec: InputSpec) -> Result<()> {
    let runner = bytes.forward_graphs(rt, [spec])?;
    let _ = text.forward_graphs_refresh(rt, runner)?;
    Ok(())
}

fn main() {
    let _ = swap;
}
