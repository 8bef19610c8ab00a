// A device of one backend with tensors of another is one error per forward, on the tensor,
// naming both fixes (issue 24, item 6: on e876914 each gave 4 to 17 errors at the attribute).
use std::sync::Arc;

use cudagraph::cudarc::driver::CudaStream;
use cudagraph::{BoxError, CudaTensor, Result, Runtime, Tensor, cuda_graph};

#[cuda_graph(sizes = [1, 2])]
fn native_device_raw_tensor(rt: &Runtime, x: &CudaTensor) -> Result<Tensor> {
    let _ = (rt, x);
    unimplemented!()
}

#[cuda_graph(sizes = [1, 2])]
fn raw_device_native_tensor(stream: &Arc<CudaStream>, x: &Tensor) -> Result<CudaTensor, BoxError> {
    let _ = (stream, x);
    unimplemented!()
}

#[cuda_graph(sizes = [1, 2])]
fn raw_device_mixed_tensors(stream: &Arc<CudaStream>, x: &CudaTensor, y: &Tensor) -> Result<CudaTensor, BoxError> {
    let _ = (stream, x, y);
    unimplemented!()
}

fn main() {}

mod candle_like {
    // The macro reads type names: candle's device with plain cudarc's tensor is refused too.
    use cudagraph::{BoxError, CudaTensor, cuda_graph};

    pub struct CudaDevice;

    #[cuda_graph(sizes = [1, 2])]
    pub fn candle_device_raw_tensor(dev: &CudaDevice, x: &CudaTensor) -> Result<CudaTensor, BoxError> {
        let _ = (dev, x);
        unimplemented!()
    }
}
