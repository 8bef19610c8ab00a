use cudagraph::{FnRunner, InputSpec, Result, Runner, Runtime, Tensor, cuda_graph};

struct M;

impl M {
    #[cuda_graph(sizes = [1, 2, 4, 8])]
    pub fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
        let _ = rt;
        rt.duplicate(x)
    }
}

// Type-checks the generated API without running anything on a GPU.
fn build<'m>(m: &'m M, rt: &'m Runtime, inputs: [InputSpec; 1]) -> Result<Runner<'m, 1, ()>> {
    m.forward_graphs(rt, inputs).map(FnRunner::into_untyped)
}

fn main() {
    let _ = (build, M::forward);
}
