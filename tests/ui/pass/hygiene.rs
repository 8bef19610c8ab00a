// User names that look like the generated ones must not clash with them.
use cudagraph::{FnRunner, InputSpec, Result, Runner, Runtime, Tensor, cuda_graph};

struct M;

#[allow(non_snake_case)]
impl M {
    #[cuda_graph(sizes = [1, 2], static_args = [rt, inputs, plan, SIZES, runner])]
    fn forward(
        &self,
        runtime: &Runtime,
        x: &Tensor,
        rt: u8,
        inputs: u16,
        plan: u32,
        SIZES: u64,
        runner: i8,
    ) -> Result<Tensor> {
        let _ = (runtime, rt, inputs, plan, SIZES, runner);
        runtime.duplicate(x)
    }
}

fn build<'m>(
    m: &'m M,
    runtime: &'m Runtime,
    specs: [InputSpec; 1],
) -> Result<Runner<'m, 1, (u8, u16, u32, u64, i8)>> {
    m.forward_graphs(runtime, specs, 1, 2, 3, 4, 5)
        .map(FnRunner::into_untyped)
}

fn estimate(m: &M, runtime: &Runtime, specs: [InputSpec; 1]) -> Result<usize> {
    Ok(m.forward_graph_memory(runtime, specs, 1, 2, 3, 4, 5)?
        .total())
}

type Statics = (u8, u16, u32, u64, i8);

fn refresh<'m>(
    m: &'m M,
    runtime: &'m Runtime,
    specs: [InputSpec; 1],
) -> Result<Runner<'m, 1, Statics>> {
    let old = m.forward_graphs(runtime, specs, 1, 2, 3, 4, 5)?;
    Ok(m.forward_graphs_refresh(runtime, old)?.0.into_untyped())
}

fn main() {
    let _ = (build, estimate, refresh);
}
