// A static argument must be `Sync` (issue 24, item 6: on e876914 an `Rc<Cell<f32>>` static
// compiled; it compares equal to itself after `set`, so the graph replayed the baked value).
use std::cell::Cell;
use std::rc::Rc;

use cudagraph::{InputSpec, Result, Runtime, Tensor, cuda_graph};

#[cuda_graph(sizes = [1, 2], static_args = [scale])]
fn scaled(rt: &Runtime, x: &Tensor, scale: Rc<Cell<f32>>) -> Result<Tensor> {
    let _ = scale.get();
    rt.duplicate(x)
}

fn demo(rt: &Runtime, spec: InputSpec) -> Result<()> {
    let scale = Rc::new(Cell::new(0.5));
    let _graphs = scaled_graphs(rt, [spec], scale.clone())?;
    scale.set(0.7);
    Ok(())
}

fn main() {
    let _ = demo;
}
