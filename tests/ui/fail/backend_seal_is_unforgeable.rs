// The seal every backend operation takes can't be made outside the runtime: not by its
// constructor, not by a literal, not by a default (issue 24, item 1).
use cudagraph::backend::Seal;
use cudagraph::{Backend, Result};

fn narrow<B: Backend>(t: &B::Tensor, n: usize) -> Result<B::Tensor> {
    B::narrow(Seal(()), t, n)
}

fn narrow_new<B: Backend>(t: &B::Tensor, n: usize) -> Result<B::Tensor> {
    B::narrow(Seal::new(), t, n)
}

fn narrow_default<B: Backend>(t: &B::Tensor, n: usize) -> Result<B::Tensor> {
    B::narrow(Default::default(), t, n)
}

fn main() {
    let _ = (
        narrow::<cudagraph::Native>,
        narrow_new::<cudagraph::Native>,
        narrow_default::<cudagraph::Native>,
    );
}
