// A `CudaTensor` (the plain-cudarc backend's tensor, and its outputs) is not `Clone`: a clone
// of an output would alias the buffer the next replay rewrites.
use cudagraph::CudaTensor;

fn keep(t: &CudaTensor) -> CudaTensor {
    t.clone()
}

fn main() {
    let _ = keep;
}
