use cudagraph::{Result, Runtime, Tensor, cuda_graph};

struct M;

impl M {
    #[cuda_graph(sizes = [1, 2, 4])]
    fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Vec<f32>> {
        let _ = (rt, x);
        Ok(Vec::new())
    }
}

fn main() {
    let _ = (M::forward, M::forward_graphs);
}
