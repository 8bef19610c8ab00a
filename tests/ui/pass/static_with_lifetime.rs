use cudagraph::{FnRunner, InputSpec, Result, Runner, Runtime, Tensor, cuda_graph};

/// A static argument that borrows: its lifetime `'a` is the user's.
#[derive(Clone, Debug, PartialEq)]
pub struct Names<'a> {
    pub prefix: &'a str,
}

pub struct Model {
    pub weights: Tensor,
}

impl Model {
    #[cuda_graph(sizes = [1, 2, 4], static_args = [names])]
    pub fn forward<'a>(&self, rt: &Runtime, x: &Tensor, names: Names<'a>) -> Result<Tensor> {
        let _ = (rt, names.prefix, &self.weights);
        rt.duplicate(x)
    }
}

fn build<'m>(
    model: &'m Model,
    rt: &'m Runtime,
    prefix: &'m str,
    inputs: [InputSpec; 1],
) -> Result<Runner<'m, 1, (Names<'m>,)>> {
    model
        .forward_graphs(rt, inputs, Names { prefix })
        .map(FnRunner::into_untyped)
}

fn main() {
    let _ = (build, Model::forward);
}
