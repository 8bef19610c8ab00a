// Keys the attribute can't take, each reported where it is written: a tensor bucketed without
// a dimension, its batch dimension bucketed, buckets out of order, an argument both static and
// keyed, one both bucketed and a variant, and a name the function lacks.
use cudagraph::{Result, Runtime, Tensor, cuda_graph};

#[cuda_graph(
    sizes = [1, 2],
    buckets = [x = [4], tables[0] = [8], n = [64, 32], m = [4], k = [2], missing = [1]],
    variants = [k = [1, 2]],
    static_args = [m]
)]
fn forward(rt: &Runtime, x: &Tensor, tables: &Tensor, n: usize, m: usize, k: u8) -> Result<Tensor> {
    let _ = (tables, n, m, k);
    rt.duplicate(x)
}

fn main() {}
