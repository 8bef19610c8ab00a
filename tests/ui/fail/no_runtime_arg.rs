use cudagraph::{Result, Tensor, cuda_graph};

struct M;

impl M {
    #[cuda_graph(sizes = [1, 2, 4])]
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        unimplemented!("{:?}", x.shape())
    }
}

fn main() {
    let _ = M::forward;
}
