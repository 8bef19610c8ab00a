// `Element` and `RawElement` are sealed (issue 24, item 3: on e876914 both impls compiled).
// An `Element` of another size than its dtype's made `upload` write past the allocation, one
// holding a `bool` made `download` undefined behaviour on the host, and a `RawElement` whose
// `wrap` kept a smaller buffer passed `from_slice`'s length check.
use cudagraph::backend::raw::{RawElement, RawSliceBox};
use cudagraph::cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use cudagraph::{DType, Element, Result};
use std::sync::Arc;

#[derive(Clone, Copy, Default)]
#[repr(C)]
struct Wide {
    a: u64,
    flag: bool,
}

unsafe impl DeviceRepr for Wide {}
unsafe impl ValidAsZeroBits for Wide {}

impl Element for Wide {
    const DTYPE: DType = DType::F32;
}

impl RawElement for Wide {
    fn wrap(_slice: CudaSlice<Self>) -> RawSliceBox {
        unimplemented!()
    }
    fn get(_slice: &RawSliceBox) -> Option<&CudaSlice<Self>> {
        None
    }
    fn take(slice: RawSliceBox) -> std::result::Result<CudaSlice<Self>, RawSliceBox> {
        Err(slice)
    }
    fn alloc_zeros(_stream: &Arc<CudaStream>, _len: usize) -> Result<CudaSlice<Self>> {
        unimplemented!()
    }
}

fn main() {}
