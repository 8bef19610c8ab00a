// A helper written the natural way takes any annotated function's runner: the identity lives on
// the `FnRunner` the constructor returns, which derefs to its `Runner` (issue 25, item 5: on
// 10293e2 this failed with "expected `()`, found `FunctionId<..>`").
use cudagraph::{InputSpec, Result, Runner, Runtime, Tensor, cuda_graph};

struct M;

impl M {
    #[cuda_graph(sizes = [1, 2])]
    fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
        rt.duplicate(x)
    }
}

#[cuda_graph(sizes = [1, 4], static_args = [eps])]
fn scaled(rt: &Runtime, x: &Tensor, eps: f32) -> Result<Tensor> {
    let _ = eps;
    rt.duplicate(x)
}

fn call<const N: usize, S>(runner: &mut Runner<'_, N, S>, inputs: [&Tensor; N], statics: &S) -> Result<bool> {
    Ok(runner.run_with(inputs, statics)?.replayed())
}

fn demo(m: &M, rt: &Runtime, spec: InputSpec) -> Result<()> {
    let mut graphs = m.forward_graphs(rt, [spec])?;
    let mut other = scaled_graphs(rt, [spec], 1e-5)?;
    let x = rt.zeros(&[2, 4], cudagraph::DType::F32)?;
    call(&mut graphs, [&x], &())?;
    call(&mut other, [&x], &(1e-5,))?;
    // The identity is still there for the generated refresh.
    let (_graphs, _report) = m.forward_graphs_refresh(rt, graphs)?;
    Ok(())
}

fn main() {
    let _ = demo;
}
