// An island's closure gets its inputs as references for the call: it can't keep one (in the
// model, say) to read after the next replay rewrote it.
use std::cell::RefCell;

use cudagraph::{Islands, Result, Runtime, Tensor, cuda_graph};

pub struct Model<'a> {
    kept: RefCell<Vec<&'a Tensor>>,
}

impl<'a> Model<'a> {
    #[cuda_graph(sizes = [1, 2])]
    pub fn forward(&self, rt: &Runtime, x: &Tensor, islands: &Islands) -> Result<Tensor> {
        islands.eager(rt, [x], |rt, [x], ()| {
            self.kept.borrow_mut().push(x);
            rt.duplicate(x)
        })
    }
}

fn main() {}
