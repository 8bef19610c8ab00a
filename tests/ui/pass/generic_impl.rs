// A generic impl's method takes the attribute; each instance's refresh takes its own runner.
use std::marker::PhantomData;

use cudagraph::{InputSpec, Result, Runner, Runtime, Tensor, cuda_graph};

struct Model<T> {
    _kind: PhantomData<T>,
}

impl<T> Model<T> {
    #[cuda_graph(sizes = [1, 2])]
    fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
        rt.duplicate(x)
    }
}

fn refresh<'m>(old: &Model<u8>, new: &'m Model<u8>, rt: &'m Runtime, spec: InputSpec) -> Result<Runner<'m, 1>> {
    let runner = old.forward_graphs(rt, [spec])?;
    let (runner, _report) = new.forward_graphs_refresh(rt, runner)?;
    Ok(runner.into_untyped())
}

fn main() {
    let _ = refresh;
}
