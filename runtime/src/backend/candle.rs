//! `Candle` (feature `candle`): forwards written on candle, `fn forward(&self, dev:
//! &CudaDevice, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor>`.
//!
//! Graphs are captured in graph-memory-node mode (the `nodes` module): candle allocates
//! with cudarc's `stream.alloc`, which under capture becomes graph memory. What the runner does
//! for candle:
//! - it captures on the device's own stream ([`CudaDevice::cuda_stream`]); make the device with
//!   `CudaDevice::new_with_stream` (`Device::new_cuda_with_stream`): candle's plain `new` uses
//!   the per-thread default stream, which the runner refuses;
//! - it refuses a device whose context tracks events (cudarc waits on per-buffer events
//!   recorded outside the capture, which breaks it): call `dev.disable_event_tracking()` (an
//!   `unsafe fn`) first, which is sound when the device's buffers are used on its one stream
//!   only, as candle's own ops do;
//! - it holds candle's host-to-device cache ([`CudaDevice::enable_cuda_graph_htod_cache`])
//!   through every warm-up and capture: candle's kernels upload their dims and strides on each
//!   call, which a capture forbids; under the cache the warm-up of each size uploads them once
//!   and the capture reuses the device copies (the cache lives as long as the thread, which the
//!   runner, not `Send`, never leaves);
//! - static inputs are candle tensors filled in place; an [`Output`](crate::Output) derefs to
//!   a candle tensor viewing the runner's output buffer. A candle tensor is `Clone`, and a
//!   clone shares that buffer, which the next replay rewrites: keep a result with
//!   [`Output::to_owned`](crate::Output::to_owned) (a copy), not `clone`.
//!
//! What the runner can't check: the graph reads the model's tensors by address; the runner
//! borrows the model for its whole life, so they stay allocated unless the model replaces them
//! through interior mutability.

use std::sync::Arc;

use candle_core::backend::BackendDevice;
use candle_core::{CudaDevice, DType as CandleDType, Storage, Tensor};
use cudarc::driver::{CudaFunction, CudaStream, DevicePtr};

use super::nodes::{self, NodeKeep, NodeMemory};
use super::raw::{
    check_capture_stream, forbid_capturing, load_function, release_cached_memory, synchronize,
};
use super::{Backend, CaptureBody, CaptureRequest, CapturedSize, Device, Rerecorded};
use super::{BackendOps, Seal};
use crate::dispatch::{InputSpec, PadValue};
use crate::error::{Error, Result};
use crate::ffi::{DeviceRange, ExecGraph};
use crate::freeze::FreezeScope;
use crate::kernel_cache::KernelModule;
use crate::policy::ReclaimPolicy;
use crate::shape::Shape;

/// candle: see the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct Candle;

impl Device for CudaDevice {
    type Backend = Candle;

    fn as_backend_device(&self) -> &Self {
        self
    }
}

fn candle_err(op: &'static str) -> impl FnOnce(candle_core::Error) -> Error {
    move |e| Error::invalid(op, e.to_string())
}

impl From<Error> for candle_core::Error {
    /// The runtime's error inside candle's (`Error::Wrapped`): so that `?` on an
    /// [`Islands::eager`](crate::Islands::eager) works in a forward returning
    /// `candle_core::Result`.
    fn from(e: Error) -> Self {
        candle_core::Error::wrap(e)
    }
}

/// The spec of an example candle tensor (its leading dimension is the batch).
pub fn spec_like(t: &Tensor) -> Result<InputSpec<CandleDType>> {
    match t.dims() {
        [] => Err(Error::invalid(
            "spec_like",
            "a graph input needs a batch dimension",
        )),
        [_, trailing @ ..] => InputSpec::new(t.dtype(), trailing),
    }
}

/// The device address of `t`'s first element and its bytes (contiguous tensors only).
fn device_range(t: &Tensor) -> Result<DeviceRange> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(cuda) = &*storage else {
        return Err(Error::ForeignTensor {
            op: "candle",
            reason: "it is not a CUDA tensor".into(),
        });
    };
    if !layout.is_contiguous() {
        return Err(Error::invalid(
            "candle",
            "graph inputs and outputs must be contiguous (call `.contiguous()`)",
        ));
    }
    use candle_core::cuda_backend::CudaStorageSlice as S;
    // Event tracking is off on the device's context (the runner turned it off), so the guards
    // record nothing.
    let base = match &cuda.slice {
        S::U8(s) | S::F6E2M3(s) | S::F6E3M2(s) | S::F4(s) | S::F8E8M0(s) => {
            s.device_ptr(s.stream()).0
        }
        S::U32(s) => s.device_ptr(s.stream()).0,
        S::I16(s) => s.device_ptr(s.stream()).0,
        S::I32(s) => s.device_ptr(s.stream()).0,
        S::I64(s) => s.device_ptr(s.stream()).0,
        S::BF16(s) => s.device_ptr(s.stream()).0,
        S::F16(s) => s.device_ptr(s.stream()).0,
        S::F32(s) => s.device_ptr(s.stream()).0,
        S::F64(s) => s.device_ptr(s.stream()).0,
        S::F8E4M3(s) => s.device_ptr(s.stream()).0,
    };
    let width = t.dtype().size_in_bytes();
    let offset = layout
        .start_offset()
        .checked_mul(width)
        .ok_or_else(|| Error::invalid("candle", "offset overflows"))?;
    let bytes = t
        .elem_count()
        .checked_mul(width)
        .ok_or_else(|| Error::invalid("candle", "size overflows"))?;
    Ok(DeviceRange {
        ptr: base + offset as u64,
        bytes,
    })
}

impl crate::dispatch::SpecSource for Tensor {
    type DType = CandleDType;

    fn spec_dtype(&self) -> CandleDType {
        self.dtype()
    }

    fn spec_dims(&self) -> &[usize] {
        self.dims()
    }
}

impl Backend for Candle {
    type Device = CudaDevice;
    type Tensor = Tensor;
    type DType = CandleDType;
}

// SAFETY: see the contract on `BackendOps`; this implementation reports ranges of tensors it
// checked, on the device's one stream, and keeps the seals it receives inside each call.
unsafe impl BackendOps for Candle {
    type Dev = CudaDevice;
    type Ten = Tensor;
    type Dt = CandleDType;
    type Memory = NodeMemory<Candle>;
    type GraphKeep = NodeKeep;
    type OutputSlot = ();

    fn stream(_: Seal, dev: &CudaDevice) -> Arc<CudaStream> {
        dev.cuda_stream()
    }

    fn prepare(_: Seal, dev: &CudaDevice) -> Result<()> {
        check_capture_stream(
            &dev.cuda_stream(),
            "the candle device tracks events: call `dev.disable_event_tracking()` (an unsafe fn) \
             (cudarc waits on per-buffer events, and a wait on an event recorded outside a capture \
             breaks it; candle runs all of a device's work on its one stream, so the events order \
             nothing unless your code uses the device's buffers on another stream)",
        )
    }

    fn forbid_during_capture(_: Seal, dev: &CudaDevice, what: &'static str) -> Result<()> {
        forbid_capturing(&dev.cuda_stream(), what)
    }

    fn synchronize(_: Seal, dev: &CudaDevice) -> Result<()> {
        synchronize(&dev.cuda_stream())
    }

    fn function(
        _: Seal,
        dev: &CudaDevice,
        module: &'static KernelModule,
        name: &'static str,
    ) -> Result<CudaFunction> {
        load_function(&dev.cuda_stream(), module, name)
    }

    fn freeze(_: Seal, dev: &CudaDevice, policy: ReclaimPolicy) -> Result<FreezeScope<'_>> {
        FreezeScope::on_stream(Seal::new(), dev.cuda_stream(), None, policy)
    }

    fn new_memory(_: Seal, dev: &CudaDevice) -> NodeMemory<Candle> {
        NodeMemory::new(&dev.cuda_stream())
    }

    fn dtype(_: Seal, t: &Tensor) -> CandleDType {
        t.dtype()
    }

    fn shape(_: Seal, t: &Tensor) -> Result<Shape> {
        Shape::new(t.dims())
    }

    fn dtype_bytes(_: Seal, dtype: CandleDType) -> usize {
        dtype.size_in_bytes()
    }

    fn pad_pattern(_: Seal, value: PadValue, dtype: CandleDType, input: usize) -> Result<u32> {
        pad_pattern(value, dtype, input)
    }

    fn check_tensor(_: Seal, dev: &CudaDevice, op: &'static str, t: &Tensor) -> Result<()> {
        match t.device() {
            candle_core::Device::Cuda(d) if d.same_device(dev) => {}
            other => {
                return Err(Error::ForeignTensor {
                    op,
                    reason: format!(
                        "it is on {:?}, the runner's device is another (another stream)",
                        other.location()
                    ),
                });
            }
        }
        device_range(t).map(|_| ())
    }

    fn range(_: Seal, t: &Tensor) -> Result<DeviceRange> {
        device_range(t)
    }

    fn zeros(
        _: Seal,
        dev: &CudaDevice,
        spec: &InputSpec<CandleDType>,
        rows: usize,
    ) -> Result<Tensor> {
        Tensor::zeros(
            spec.full_shape(rows),
            spec.dtype(),
            &candle_core::Device::Cuda(dev.clone()),
        )
        .map_err(candle_err("zeros"))
    }

    fn narrow(_: Seal, t: &Tensor, rows: usize) -> Result<Tensor> {
        t.narrow(0, 0, rows).map_err(candle_err("narrow"))
    }

    fn duplicate(_: Seal, dev: &CudaDevice, t: &Tensor) -> Result<Tensor> {
        forbid_capturing(&dev.cuda_stream(), "a copy of an output")?;
        Candle::check_tensor(Seal::new(), dev, "a copy of an output", t)?;
        t.copy().map_err(candle_err("copy"))
    }

    fn view_prefix(_: Seal, t: &Tensor, dims: &[usize]) -> Result<Tensor> {
        let numel: usize = dims.iter().product();
        t.flatten_all()
            .and_then(|flat| flat.narrow(0, 0, numel))
            .and_then(|flat| flat.reshape(dims))
            .map_err(candle_err("view_prefix"))
    }

    fn share(_: Seal, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }

    fn capture_copy(_: Seal, dev: &CudaDevice, t: &Tensor) -> Result<Tensor> {
        Candle::check_tensor(Seal::new(), dev, "an island's output", t)?;
        t.copy().map_err(candle_err("copy"))
    }

    fn capture(
        _: Seal,
        dev: &CudaDevice,
        memory: &mut NodeMemory<Candle>,
        request: CaptureRequest,
        body: &mut CaptureBody<'_, Self>,
    ) -> Result<CapturedSize<Self>> {
        let _cache = dev.enable_cuda_graph_htod_cache();
        nodes::capture(dev, memory, request, body)
    }

    fn rerecord(
        _: Seal,
        dev: &CudaDevice,
        memory: &mut NodeMemory<Candle>,
        _keep: &NodeKeep,
        exec: &mut ExecGraph,
        request: CaptureRequest,
        body: &mut CaptureBody<'_, Self>,
    ) -> std::result::Result<Rerecorded<Self>, (Error, bool)> {
        let _cache = dev.enable_cuda_graph_htod_cache();
        nodes::rerecord(dev, memory, exec, request, body)
    }

    fn usable(_: Seal, _memory: &NodeMemory<Candle>, keep: &NodeKeep) -> bool {
        nodes::usable(keep)
    }

    fn output_view(
        _: Seal,
        _dev: &CudaDevice,
        memory: &NodeMemory<Candle>,
        _keep: &NodeKeep,
        _slot: &(),
        rows: usize,
    ) -> Result<Tensor> {
        nodes::output_view(memory, rows)
    }

    fn memory_bytes(_: Seal, memory: &NodeMemory<Candle>) -> usize {
        memory.bytes()
    }

    fn graph_memory_usage(_: Seal, dev: &CudaDevice) -> Result<Option<nodes::GraphMemoryUsage>> {
        nodes::GraphMemoryUsage::of_context(dev.cuda_stream().context()).map(Some)
    }

    fn release(_: Seal, _dev: &CudaDevice, memory: &mut NodeMemory<Candle>) -> (bool, Result<()>) {
        nodes::release(memory)
    }

    fn resume(_: Seal, _dev: &CudaDevice, _memory: &mut NodeMemory<Candle>) -> Result<()> {
        Ok(())
    }

    fn poison(_: Seal, _dev: &CudaDevice, memory: &NodeMemory<Candle>) -> Result<()> {
        nodes::poison(memory)
    }

    fn release_cached_memory(_: Seal, dev: &CudaDevice) -> Result<()> {
        release_cached_memory(&dev.cuda_stream())
    }
}

/// `value` as a 32-bit fill pattern of candle's `dtype`.
fn pad_pattern(value: PadValue, dtype: CandleDType, input: usize) -> Result<u32> {
    let bad = || {
        Error::invalid(
            "pad",
            format!("pad value {value:?} of input {input} is not a valid {dtype:?} value"),
        )
    };
    let int = |v: PadValue| match v {
        PadValue::Int(i) => Ok(i),
        PadValue::Float(_) => Err(bad()),
    };
    let float = |v: PadValue| match v {
        PadValue::Int(i) => i as f64,
        PadValue::Float(f) => f,
    };
    let twice16 = |h: u16| u32::from(h) | (u32::from(h) << 16);
    Ok(match dtype {
        CandleDType::U8 => {
            let b = u8::try_from(int(value)?).map_err(|_| bad())?;
            u32::from_ne_bytes([b; 4])
        }
        CandleDType::U32 => u32::try_from(int(value)?).map_err(|_| bad())?,
        CandleDType::I16 => twice16(i16::try_from(int(value)?).map_err(|_| bad())? as u16),
        CandleDType::I32 => i32::try_from(int(value)?).map_err(|_| bad())? as u32,
        CandleDType::I64 => {
            // A 64-bit fill repeats a 32-bit pattern: values whose two halves are equal (0, -1).
            let v = int(value)?;
            let (lo, hi) = (v as u64 as u32, (v as u64 >> 32) as u32);
            if lo != hi {
                return Err(bad());
            }
            lo
        }
        CandleDType::BF16 => twice16(half::bf16::from_f64(float(value)).to_bits()),
        CandleDType::F16 => twice16(half::f16::from_f64(float(value)).to_bits()),
        CandleDType::F32 => (float(value) as f32).to_bits(),
        _ => return Err(bad()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_values_convert_to_candle_dtypes() {
        let p = |v, d| pad_pattern(v, d, 0);
        assert_eq!(p(PadValue::Int(0), CandleDType::U32).unwrap(), 0);
        assert_eq!(p(PadValue::Int(-1), CandleDType::I64).unwrap(), u32::MAX);
        assert!(
            p(PadValue::Int(1), CandleDType::I64).is_err(),
            "halves differ"
        );
        assert!(p(PadValue::Int(-1), CandleDType::U32).is_err());
        assert!(p(PadValue::Int(256), CandleDType::U8).is_err());
        assert_eq!(p(PadValue::Int(7), CandleDType::U8).unwrap(), 0x0707_0707);
        assert_eq!(
            p(PadValue::Float(1.0), CandleDType::F32).unwrap(),
            1.0f32.to_bits()
        );
        assert_eq!(
            p(PadValue::Int(1), CandleDType::BF16).unwrap(),
            0x3F80_3F80,
            "bf16 1.0 twice"
        );
        assert!(p(PadValue::Float(0.5), CandleDType::I32).is_err());
    }
}
