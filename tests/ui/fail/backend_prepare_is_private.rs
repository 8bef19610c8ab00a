// The backend's device setup (for candle: turning event tracking off) is not callable from
// user code (found by the review of a714c86).
use std::sync::Arc;
use cudagraph::backend::raw::Raw;
use cudagraph::cudarc::driver::CudaStream;
use cudagraph::Backend;

pub fn f(s: &Arc<CudaStream>) {
    let _ = <Raw as Backend>::prepare(s);
    let _ = <Raw as Backend>::release_cached_memory(s);
}

fn main() {}
