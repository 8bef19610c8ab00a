// The runner's operations on tensors can't be reached through a generic `B: Backend` bound
// either (issue 24, item 1: on e876914 all three of these compiled). `narrow` made an owned
// alias of pool memory (native) or of the runner's output buffer (plain cudarc), and
// `stream` handed out the runtime's raw stream without `unsafe`.
use std::sync::Arc;

use cudagraph::cudarc::driver::CudaStream;
use cudagraph::{Backend, Result};

fn narrow<B: Backend>(t: &B::Tensor, n: usize) -> Result<B::Tensor> {
    B::narrow(t, n)
}

fn duplicate<B: Backend>(dev: &B::Device, t: &B::Tensor) -> Result<B::Tensor> {
    B::duplicate(dev, t)
}

fn stream<B: Backend>(dev: &B::Device) -> Arc<CudaStream> {
    B::stream(dev)
}

fn main() {
    let _ = (
        narrow::<cudagraph::Native>,
        duplicate::<cudagraph::Native>,
        stream::<cudagraph::Native>,
    );
}
