use cudagraph::{Result, Runtime, Tensor, cuda_graph};

struct M;

impl M {
    #[cuda_graph(sizes = [1, 2, 4], capture = eager)]
    fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
        let _ = rt;
        rt.duplicate(x)
    }

    #[cuda_graph(sizes = [1, 2, 4], capture = "lazy")]
    fn forward_quoted(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
        let _ = rt;
        rt.duplicate(x)
    }

    #[cuda_graph(sizes = [1, 2, 4], lazy = true)]
    fn forward_flag(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
        let _ = rt;
        rt.duplicate(x)
    }

    #[cuda_graph(sizes = [1, 2, 4], capture = lazy, capture = init)]
    fn forward_twice(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
        let _ = rt;
        rt.duplicate(x)
    }
}

fn main() {
    let _ = (M::forward, M::forward_quoted, M::forward_flag, M::forward_twice);
}
