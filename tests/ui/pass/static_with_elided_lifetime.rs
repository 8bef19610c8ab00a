// A static argument whose type holds an elided reference (`Option<&Cfg>`, `Pair<'_>`) works:
// the generated functions give the elided lifetimes a name of their own (issue 25, item 5: on
// 10293e2 it failed with E0106 and E0621 pointing into generated code).
use cudagraph::{InputSpec, Result, Runtime, Tensor, cuda_graph};

#[derive(Debug, PartialEq)]
pub struct Cfg {
    pub eps: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pair<'a> {
    pub first: &'a Cfg,
}

pub struct M;

impl M {
    #[cuda_graph(sizes = [1, 2], static_args = [cfg, pair])]
    pub fn forward(&self, rt: &Runtime, x: &Tensor, cfg: Option<&Cfg>, pair: Pair<'_>) -> Result<Tensor> {
        let _ = (cfg, pair);
        rt.duplicate(x)
    }
}

#[cuda_graph(sizes = [1, 2], static_args = [cfg])]
fn free(rt: &Runtime, x: &Tensor, cfg: Option<&Cfg>) -> Result<Tensor> {
    let _ = cfg;
    rt.duplicate(x)
}

fn build<'m>(m: &'m M, rt: &'m Runtime, cfg: &'m Cfg, spec: InputSpec) -> Result<()> {
    let mut graphs = m.forward_graphs(rt, [spec], Some(cfg), Pair { first: cfg })?;
    let x = rt.zeros(&[2, 4], cudagraph::DType::F32)?;
    let _ = graphs.run_with([&x], &(Some(cfg), Pair { first: cfg }))?;
    let (_graphs, _) = m.forward_graphs_refresh(rt, graphs)?;
    let _free = free_graphs(rt, [spec], Some(cfg))?;
    let _ = m.forward_graph_memory(rt, [spec], None, Pair { first: cfg })?;
    Ok(())
}

fn main() {
    let _ = build;
}
