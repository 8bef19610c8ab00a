// Graphs keyed by more than the batch: a host value rounded up to buckets, a variant, and a
// dimension of an input padded to buckets (issue 27).
use cudagraph::{DType, InputSpec, Result, Runtime, Tensor, cuda_graph, ops};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Fast,
    Exact,
}

pub struct Model {
    w: Tensor,
}

impl Model {
    /// `max_context` gets 512, 2048 or 8192 (the bucket holding the call's value); `lora` one
    /// graph set per value; `tables` is padded to 4 or 16 columns; `scale` is a plain static.
    #[cuda_graph(
        sizes = [1, 2, 4],
        buckets = [max_context = [512, 2048, 8192], tables[1] = [4, 16]],
        variants = [lora = [false, true], mode = [Mode::Fast, Mode::Exact]],
        static_args = [scale],
        pad = [tables = -1]
    )]
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        rt: &Runtime,
        x: &Tensor,
        tables: &Tensor,
        max_context: usize,
        lora: bool,
        mode: Mode,
        scale: f32,
    ) -> Result<Tensor> {
        let _ = (max_context, lora, mode, tables);
        let y = ops::scale(rt, x, scale)?;
        ops::add(rt, &y, &self.w)
    }
}

/// A free function keyed by a bucketed `u32` alone.
#[cuda_graph(sizes = [1, 2], buckets = [longest = [64, 128]])]
fn free(rt: &Runtime, x: &Tensor, longest: u32) -> Result<Tensor> {
    let _ = longest;
    rt.duplicate(x)
}

fn demo(rt: &Runtime, m: &Model) -> Result<()> {
    let specs = [
        InputSpec::new(DType::BF16, &[8])?,
        // The bucketed dimension's size here is replaced by its largest bucket.
        InputSpec::new(DType::I32, &[16])?,
    ];
    // Only the plain static is an argument: the keys take every listed value.
    let mut graphs = m.forward_graphs(rt, specs, 0.5)?;
    let x = rt.zeros(&[2, 8], DType::BF16)?;
    let tables = rt.zeros(&[2, 3], DType::I32)?;
    let out = graphs.run_with([&x, &tables], &(1000, true, Mode::Exact, 0.5))?;
    let _ = out.replayed();
    drop(out);
    let _estimate = m.forward_graph_memory(rt, specs, 0.5)?;
    let (_graphs, _report) = m.forward_graphs_refresh(rt, graphs)?;
    let mut f = free_graphs(rt, [InputSpec::new(DType::BF16, &[8])?])?;
    drop(f.run_with([&x], &(100,))?);
    Ok(())
}

fn main() {
    let _ = demo;
}
