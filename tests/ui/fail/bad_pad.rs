use cudagraph::{Result, Runtime, Tensor, cuda_graph};

struct M;

impl M {
    #[cuda_graph(
        sizes = [1, 2],
        static_args = [n],
        pad = [positions = -1, positions = 0, nope = 1, n = 2, rt = 0.5, tokens = x]
    )]
    fn forward(
        &self,
        rt: &Runtime,
        tokens: &Tensor,
        positions: &Tensor,
        n: usize,
    ) -> Result<Tensor> {
        let _ = (rt, positions, n);
        rt.duplicate(tokens)
    }
}

fn main() {
    let _ = M::forward;
}
