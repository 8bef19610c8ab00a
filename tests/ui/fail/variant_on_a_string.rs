// `variants` keys the graphs by a `Copy + Eq` host argument: a `String` is refused at its type.
use cudagraph::{Result, Runtime, Tensor, cuda_graph};

#[cuda_graph(sizes = [1, 2], variants = [adapter = ["a", "b"]])]
fn forward(rt: &Runtime, x: &Tensor, adapter: String) -> Result<Tensor> {
    let _ = adapter;
    rt.duplicate(x)
}

fn main() {}
