// A bare `&CudaStream` device is one error naming the fix (issue 24, item 6: on e876914 it
// gave a dozen errors, all at the attribute).
use cudagraph::cudarc::driver::CudaStream;
use cudagraph::{BoxError, CudaTensor, cuda_graph};

#[cuda_graph(sizes = [1, 2])]
fn forward(stream: &CudaStream, x: &CudaTensor) -> Result<CudaTensor, BoxError> {
    let _ = (stream, x);
    unimplemented!()
}

fn main() {}
