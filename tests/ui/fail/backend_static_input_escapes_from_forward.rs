// A forward can't keep an owned alias of the runner's static input buffer through the
// backend's `narrow` (found by the review of a714c86).
use std::cell::RefCell;
use std::sync::Arc;

use cudagraph::backend::raw::Raw;
use cudagraph::cudarc::driver::CudaStream;
use cudagraph::{cuda_graph, Backend, BoxError, CudaTensor};

struct M {
    kept: RefCell<Vec<CudaTensor>>,
}

impl M {
    #[cuda_graph(sizes = [1, 2, 4])]
    fn forward(&self, stream: &Arc<CudaStream>, x: &CudaTensor) -> Result<CudaTensor, BoxError> {
        self.kept.borrow_mut().push(<Raw as Backend>::narrow(x, x.rows())?);
        let y = stream.alloc_zeros::<f32>(x.rows() * 4)?;
        Ok(CudaTensor::from_slice(y, &[x.rows(), 4])?)
    }
}

fn main() {}
