use cudagraph::{Result, Runtime, Tensor, cuda_graph};

struct M;

impl M {
    #[cuda_graph(sizes = [1, 2])]
    fn forward(&self, rt: &Runtime, x: &impl AsRef<Tensor>, f: impl Fn()) -> Result<Tensor> {
        let _ = (rt, f);
        rt.duplicate(x.as_ref())
    }
}

fn main() {
    let _ = M;
}
