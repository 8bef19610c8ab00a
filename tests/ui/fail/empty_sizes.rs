use cudagraph::{Result, Runtime, Tensor, cuda_graph};

struct M;

impl M {
    #[cuda_graph(sizes = [])]
    fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
        let _ = rt;
        rt.duplicate(x)
    }
}

fn main() {
    let _ = M::forward;
}
