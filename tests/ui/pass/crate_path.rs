// `crate = "..."` for users who rename the dependency.
extern crate cudagraph as cg;

use cg::{InputSpec, Result, Runtime, Tensor};

struct M;

impl M {
    #[cg::cuda_graph(sizes = [1, 2], crate = "::cg")]
    fn forward<'a>(&'a self, rt: &'a Runtime, x: &'a Tensor) -> Result<Tensor> {
        let _ = rt;
        rt.duplicate(x)
    }
}

fn build<'m>(m: &'m M, rt: &'m Runtime, specs: [InputSpec; 1]) -> Result<cg::Runner<'m, 1, ()>> {
    m.forward_graphs(rt, specs).map(cg::FnRunner::into_untyped)
}

fn main() {
    let _ = build;
}
