// The generated code names no items of its own inside the generated
// functions (the sizes and the lookup table are inline literals), so static
// arguments, and constants of the user's module, may use any name.
use cudagraph::{Result, Runtime, Tensor, cuda_graph};

pub struct M;

impl M {
    #[cuda_graph(sizes = [1, 2, 4], static_args = [__CG_SIZES, __CG_LOOKUP])]
    #[allow(non_snake_case)]
    pub fn forward(
        &self,
        rt: &Runtime,
        x: &Tensor,
        __CG_SIZES: u32,
        __CG_LOOKUP: &[u16; 2],
    ) -> Result<Tensor> {
        let _ = (rt, __CG_SIZES, __CG_LOOKUP);
        rt.duplicate(x)
    }
}

mod user {
    use cudagraph::{Result, Runtime, Tensor, cuda_graph};

    pub const __CG_SIZES: &[usize] = &[3];
    pub const __CG_LOOKUP: &[u16] = &[7];

    #[cuda_graph(sizes = [1, 2])]
    pub fn step(rt: &Runtime, x: &Tensor) -> Result<Tensor> {
        let _ = (rt, __CG_SIZES, __CG_LOOKUP);
        rt.duplicate(x)
    }
}

fn main() {
    let _ = (M::forward_graphs, M::forward_graphs_refresh, M::forward_graph_memory);
    let _ = (user::step_graphs, user::step_graphs_refresh, user::step_graph_memory);
}
