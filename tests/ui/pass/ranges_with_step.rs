use cudagraph::{InputSpec, Result, Runner, Runtime, Tensor, cuda_graph};

struct M;

impl M {
    #[cuda_graph(sizes = [1, 2, 4, 8..=256 step 8, 384..=1024 step 128, 2048usize])]
    pub fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
        let _ = rt;
        rt.duplicate(x)
    }

    #[cuda_graph(sizes = [3..=5, 7])]
    pub(crate) fn decode(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
        let _ = rt;
        rt.duplicate(x)
    }
}

fn build<'m>(m: &'m M, rt: &'m Runtime, a: [InputSpec; 1], b: [InputSpec; 1]) -> Result<()> {
    let _: Runner<'m, 1, ()> = m.forward_graphs(rt, a)?.into_untyped();
    let _: Runner<'m, 1, ()> = m.decode_graphs(rt, b)?.into_untyped();
    Ok(())
}

fn main() {
    let _ = (build, M::forward, M::decode);
}
