use cudagraph::{Result, Runtime, Tensor, cuda_graph};

struct M;

impl M {
    #[cuda_graph(sizes = [1, 2, 4])]
    fn forward(&self, rt: &Runtime) -> Result<Tensor> {
        let _ = rt;
        todo!()
    }
}

fn main() {
    let _ = M::forward;
}
