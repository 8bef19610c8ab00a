use cudagraph::{Result, Runtime, Tensor, cuda_graph};

trait Forward {
    fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor>;
}

struct M;

// The macro sees only the method, not the `impl Forward for M` around it: the
// generated siblings are not members of the trait (E0407), reported at the
// attribute. Put `#[cuda_graph]` on an inherent method and call it from the
// trait method instead.
impl Forward for M {
    #[cuda_graph(sizes = [1, 2])]
    fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
        let _ = rt;
        rt.duplicate(x)
    }
}

fn main() {
    let _ = <M as Forward>::forward;
}
