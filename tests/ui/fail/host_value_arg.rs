use cudagraph::{Result, Runtime, Tensor, cuda_graph};

struct M;

impl M {
    #[cuda_graph(sizes = [1, 2, 4])]
    fn forward(&self, rt: &Runtime, x: &Tensor, n: usize) -> Result<Tensor> {
        let _ = (rt, n);
        rt.duplicate(x)
    }
}

fn main() {
    let _ = M::forward;
}
