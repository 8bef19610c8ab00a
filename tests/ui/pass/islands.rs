// Eager islands: a forward takes `&Islands<L>` and wraps what a graph can't hold in
// `islands.eager(..)`; its closure borrows the model (the macro ties the borrow to `&self`) and
// reads the live arguments `L` of each call.
use cudagraph::{DType, InputSpec, Islands, Result, Runtime, Tensor, cuda_graph, ops};

pub struct Model {
    w: Tensor,
}

impl Model {
    /// An island in the middle, reading a live argument, and a bare break.
    #[cuda_graph(sizes = [1, 2, 4])]
    pub fn forward(&self, rt: &Runtime, x: &Tensor, islands: &Islands<(u32,)>) -> Result<Tensor> {
        let h = ops::add(rt, x, x)?;
        let a = islands.eager(rt, [&h], |rt, [h], &(extra,)| {
            // Host work every call: a download (a synchronisation), and a value of this call.
            let _count = rt.download_f32(h)?.len() + extra as usize;
            ops::add(rt, h, &self.w)
        })?;
        islands.graph_break(rt)?;
        ops::add(rt, &a, x)
    }

    /// Islands without live arguments.
    #[cuda_graph(sizes = [1, 2])]
    pub fn plain(&self, rt: &Runtime, x: &Tensor, islands: &Islands) -> Result<Tensor> {
        islands.eager(rt, [x], |rt, [x], ()| rt.duplicate(x))
    }
}

/// A free function with islands.
#[cuda_graph(sizes = [1, 2])]
fn free(rt: &Runtime, x: &Tensor, islands: &Islands<(f32,)>) -> Result<Tensor> {
    islands.eager(rt, [x], |rt, [x], &(scale,)| ops::scale(rt, x, scale))
}

fn demo(rt: &Runtime, m: &Model) -> Result<()> {
    let spec = InputSpec::new(DType::BF16, &[8])?;
    let x = rt.zeros(&[2, 8], DType::BF16)?;
    // Built with the live arguments its warm-ups and captures run with.
    let mut graphs = m.forward_graphs(rt, [spec], (7,))?;
    let out = graphs.run_live([&x], &(), &(9,))?;
    let _ = out.replayed();
    drop(out);
    let _estimate = m.forward_graph_memory(rt, [spec], (7,))?;
    let (_graphs, _report) = m.forward_graphs_refresh(rt, graphs)?;
    // No live arguments: `run` as always.
    let mut plain = m.plain_graphs(rt, [spec])?;
    drop(plain.run([&x])?);
    let mut f = free_graphs(rt, [spec], (0.5,))?;
    drop(f.run_live([&x], &(), &(2.0,))?);
    // A direct call: every island at once.
    let _ = m.forward(rt, &x, &Islands::direct(&(3,)))?;
    Ok(())
}

fn main() {
    let _ = demo;
}
