// An island's closure is stored by the runner and run at every replay: it can't borrow a tensor
// of the forward (one a segment computed), which lives for one call only. The tensor goes in as
// an input instead: `islands.eager(rt, [&h], |rt, [h], ()| ..)`.
use cudagraph::{Islands, Result, Runtime, Tensor, cuda_graph, ops};

pub struct Model;

impl Model {
    #[cuda_graph(sizes = [1, 2])]
    pub fn forward(&self, rt: &Runtime, x: &Tensor, islands: &Islands) -> Result<Tensor> {
        let h = ops::add(rt, x, x)?;
        islands.eager(rt, [x], |rt, [_x], ()| rt.duplicate(&h))
    }
}

fn main() {}
