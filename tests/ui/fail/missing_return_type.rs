use cudagraph::{Runtime, Tensor, cuda_graph};

struct M;

impl M {
    #[cuda_graph(sizes = [1, 2, 4])]
    fn forward(&self, rt: &Runtime, x: &Tensor) {
        let _ = (rt, x);
    }
}

fn main() {
    let _ = M::forward;
}
