// A staged call: the rows written into the runner's buffers, then a replay with no input copy.
use cudagraph::{cuda_graph, DType, InputSpec, Result, Runtime, Tensor};

struct M;

impl M {
    #[cuda_graph(sizes = [1, 2, 4], pad = [x = 0])]
    fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
        rt.duplicate(x)
    }
}

fn stage_some(rt: &Runtime) -> Result<()> {
    let m = M;
    let mut graphs = m.forward_graphs(rt, [InputSpec::new(DType::F32, &[4])?])?;
    for n in [3, 1, 4] {
        let staged = graphs.stage(n)?;
        let [x] = staged.inputs();
        rt.upload_into(&vec![1f32; n * 4], x)?;
        assert!(staged.size() >= staged.rows());
        let out = staged.run()?;
        println!("{:?}", out.shape());
    }
    Ok(())
}

fn main() {
    // Compiled, not run (no GPU here).
    let _ = stage_some;
}
