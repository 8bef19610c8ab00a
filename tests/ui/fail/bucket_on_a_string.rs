// `buckets` rounds up an integer host argument: a `String` is refused at its type.
use cudagraph::{Result, Runtime, Tensor, cuda_graph};

#[cuda_graph(sizes = [1, 2], buckets = [name = [1, 2]])]
fn forward(rt: &Runtime, x: &Tensor, name: String) -> Result<Tensor> {
    let _ = name;
    rt.duplicate(x)
}

fn main() {}
