//! A two-layer MLP written on plain cudarc, as a cudarc user writes one: its own NVRTC kernel,
//! cudarc's cuBLAS, `CudaSlice` weights, and `stream.alloc` for intermediates. Only the
//! signature is cudagraph's: a `&Arc<CudaStream>` device and [`CudaTensor`] inputs and output
//! (which wrap `CudaSlice`s without a copy), so `#[cuda_graph]` captures it in
//! graph-memory-node mode (see [`backend::nodes`](cudagraph::backend::nodes)).
//!
//! `y = relu(x · W1 + b1) · W2`, f32, row-major.

use std::sync::Arc;

use cudagraph::cudarc::cublas::{CudaBlas, Gemm, GemmConfig, sys as cublas_sys};
use cudagraph::cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};

use cudagraph::{BoxError, CudaTensor, cuda_graph};

/// The kernel the MLP adds its bias and applies ReLU with (compiled by NVRTC at load).
const BIAS_RELU: &str = r#"
extern "C" __global__ void bias_relu(float* h, const float* b, unsigned int rows, unsigned int cols) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < rows * cols) {
        float v = h[i] + b[i % cols];
        h[i] = v > 0.0f ? v : 0.0f;
    }
}
"#;

/// Bytes of the workspace the MLP gives cuBLAS: with a workspace of its own, cuBLAS never
/// allocates while a graph is captured.
const CUBLAS_WORKSPACE: usize = 4 << 20;

/// The MLP's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlpDims {
    /// Input features.
    pub d_in: usize,
    /// Hidden features.
    pub d_hidden: usize,
    /// Output features.
    pub d_out: usize,
}

/// The MLP: weights in `CudaSlice`s, a cuBLAS handle and the NVRTC kernel, all on one stream.
pub struct CudarcMlp {
    dims: MlpDims,
    /// The stream the model was built on: its cuBLAS handle is bound to it, and its weights
    /// are ordered on it (the context tracks no events), so the forward refuses any other.
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    _workspace: CudaSlice<u8>,
    bias_relu: CudaFunction,
    w1: CudaSlice<f32>,
    b1: CudaSlice<f32>,
    w2: CudaSlice<f32>,
}

/// A deterministic pseudo-random sequence in `[-scale, scale)` (xorshift64*).
pub fn random_values(seed: u64, len: usize, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let bits = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
            (bits as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// A new stream on device `ordinal` whose context tracks no events, as graph capture needs
/// (see [`backend::raw`](cudagraph::backend::raw)).
///
/// # Safety
///
/// Turning event tracking off drops cudarc's ordering of buffers across the streams of the
/// returned stream's context (the `CudaContext` made here, and every stream made from it). The
/// caller promises that every buffer allocated there is used, and dropped, on one stream only,
/// or that it orders the streams itself (an event, a synchronize) before a buffer crosses from
/// one to another. Otherwise a buffer freed on one stream may still be read by a copy or kernel
/// on another.
pub unsafe fn capture_stream(ordinal: usize) -> Result<Arc<CudaStream>, BoxError> {
    let ctx = CudaContext::new(ordinal)?;
    // SAFETY: the caller's promise above: no buffer of this context crosses streams unordered,
    // so cudarc's per-buffer events are not needed.
    unsafe { ctx.disable_event_tracking() };
    Ok(ctx.new_stream()?)
}

impl CudarcMlp {
    /// An MLP of `dims` with random weights from `seed`, on `stream`.
    pub fn new(stream: &Arc<CudaStream>, dims: MlpDims, seed: u64) -> Result<Self, BoxError> {
        let blas = CudaBlas::new(stream.clone())?;
        let workspace = stream.alloc_zeros::<u8>(CUBLAS_WORKSPACE)?;
        {
            use cudagraph::cudarc::driver::DevicePtr;
            let (ptr, _guard) = workspace.device_ptr(stream);
            // SAFETY: the handle is live; the workspace is a live buffer of `CUBLAS_WORKSPACE`
            // bytes owned by the model next to the handle, so it outlives every call.
            unsafe {
                cublas_sys::cublasSetWorkspace_v2(
                    *blas.handle(),
                    ptr as *mut std::ffi::c_void,
                    CUBLAS_WORKSPACE,
                )
            }
            .result()?;
        }
        let ptx = cudagraph::cudarc::nvrtc::compile_ptx(BIAS_RELU)?;
        let module = stream.context().load_module(ptx)?;
        let bias_relu = module.load_function("bias_relu")?;
        let scale_in = 1.0 / (dims.d_in as f32).sqrt();
        let scale_hidden = 1.0 / (dims.d_hidden as f32).sqrt();
        let w1 = stream.clone_htod(&random_values(seed, dims.d_in * dims.d_hidden, scale_in))?;
        let b1 = stream.clone_htod(&random_values(seed + 1, dims.d_hidden, 0.1))?;
        let w2 = stream.clone_htod(&random_values(
            seed + 2,
            dims.d_hidden * dims.d_out,
            scale_hidden,
        ))?;
        Ok(Self {
            dims,
            stream: stream.clone(),
            blas,
            _workspace: workspace,
            bias_relu,
            w1,
            b1,
            w2,
        })
    }

    /// The sizes.
    pub fn dims(&self) -> MlpDims {
        self.dims
    }

    /// `y[rows, k_out] = x[rows, k_in] · w[k_in, k_out]`, row-major (cuBLAS is column-major:
    /// it computes `yᵀ = wᵀ · xᵀ`).
    fn matmul<X, W>(
        &self,
        x: &X,
        w: &W,
        y: &mut CudaSlice<f32>,
        rows: usize,
        k_in: usize,
        k_out: usize,
    ) -> Result<(), BoxError>
    where
        X: cudagraph::cudarc::driver::DevicePtr<f32>,
        W: cudagraph::cudarc::driver::DevicePtr<f32>,
    {
        let cfg = GemmConfig {
            transa: cublas_sys::cublasOperation_t::CUBLAS_OP_N,
            transb: cublas_sys::cublasOperation_t::CUBLAS_OP_N,
            m: i32::try_from(k_out)?,
            n: i32::try_from(rows)?,
            k: i32::try_from(k_in)?,
            alpha: 1.0f32,
            lda: i32::try_from(k_out)?,
            ldb: i32::try_from(k_in)?,
            beta: 0.0f32,
            ldc: i32::try_from(k_out)?,
        };
        // SAFETY: `w` holds k_in·k_out, `x` rows·k_in and `y` rows·k_out floats (checked by the
        // callers' shapes); all three live across the call, ordered on the handle's stream.
        unsafe { self.blas.gemm(cfg, w, x, y) }?;
        Ok(())
    }

    /// The stream the model was built on, the only one its forward runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The forward: `relu(x · W1 + b1) · W2` for a batch of rows. An error on a stream other
    /// than the model's own: its cuBLAS handle launches on that one, and nothing would order
    /// the other stream's work with it.
    #[cuda_graph(sizes = [1, 2, 4, 8, 16, 32])]
    pub fn forward(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaTensor,
    ) -> Result<CudaTensor, BoxError> {
        if !Arc::ptr_eq(stream, &self.stream) {
            return Err(
                "CudarcMlp::forward: the stream is not the model's own (its cuBLAS handle \
                        and weights are ordered on the stream it was built with)"
                    .into(),
            );
        }
        let MlpDims {
            d_in,
            d_hidden,
            d_out,
        } = self.dims;
        let rows = x.rows();
        if x.dims() != [rows, d_in] {
            return Err(format!("input of shape {:?}, expected [rows, {d_in}]", x.dims()).into());
        }
        let x = x.view::<f32>()?;
        // Both intermediates come from `stream.alloc`: graph memory nodes under capture.
        let mut h = stream.alloc_zeros::<f32>(rows * d_hidden)?;
        self.matmul(&x, &self.w1, &mut h, rows, d_in, d_hidden)?;
        let total = u32::try_from(rows * d_hidden)?;
        let (rows32, cols32) = (u32::try_from(rows)?, u32::try_from(d_hidden)?);
        let cfg = LaunchConfig::for_num_elems(total);
        let mut launch = stream.launch_builder(&self.bias_relu);
        launch.arg(&mut h).arg(&self.b1).arg(&rows32).arg(&cols32);
        // SAFETY: `bias_relu` takes (float*, const float*, uint, uint); `h` holds rows·d_hidden
        // floats and `b1` d_hidden, both live until the kernel ran (stream-ordered).
        unsafe { launch.launch(cfg) }?;
        let mut y = stream.alloc_zeros::<f32>(rows * d_out)?;
        self.matmul(&h, &self.w2, &mut y, rows, d_hidden, d_out)?;
        Ok(CudaTensor::from_slice(y, &[rows, d_out])?)
    }
}
