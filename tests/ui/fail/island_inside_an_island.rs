// An island inside an island: the inner one would run eagerly anyway. The islands themselves are
// borrowed for one call, so an island's closure can't reach them.
use cudagraph::{Islands, Result, Runtime, Tensor, cuda_graph};

pub struct Model;

impl Model {
    #[cuda_graph(sizes = [1, 2])]
    pub fn forward(&self, rt: &Runtime, x: &Tensor, islands: &Islands) -> Result<Tensor> {
        islands.eager(rt, [x], |rt, [x], ()| {
            islands.eager(rt, [x], |rt, [x], ()| rt.duplicate(x))
        })
    }
}

fn main() {}
