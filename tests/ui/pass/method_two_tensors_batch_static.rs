use cudagraph::{FnRunner, InputSpec, Result, Runner, Runtime, Tensor, cuda_graph};

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub layers: usize,
}

pub struct Model {
    pub weights: Tensor,
}

impl Model {
    #[cuda_graph(sizes = [1, 2, 4, 8..=64 step 8], batch = positions, static_args = [cfg, window])]
    pub fn forward(
        &self,
        tokens: &Tensor,
        rt: &Runtime,
        positions: &Tensor,
        cfg: &Config,
        window: u32,
    ) -> Result<Tensor> {
        let _ = (rt, positions, cfg.layers, window, &self.weights);
        rt.duplicate(tokens)
    }
}

fn build<'m>(
    model: &'m Model,
    rt: &'m Runtime,
    inputs: [InputSpec; 2],
) -> Result<Runner<'m, 2, (Config, u32)>> {
    // Static arguments follow the inputs, in declaration order, by value.
    model
        .forward_graphs(rt, inputs, Config { layers: 2 }, 128)
        .map(FnRunner::into_untyped)
}

fn main() {
    let _ = (build, Model::forward);
}
