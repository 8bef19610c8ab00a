//! [`Tensor`]: device bytes, a shape and a dtype; [`TensorView`]s of its rows or of another
//! shape borrow it.
//!
//! A `Tensor` is not `Clone`: whoever holds one owns its bytes (or, for a tensor a capture
//! allocated, a block of a graph pool that the next replay rewrites). Views borrow the tensor
//! they come from, so nothing outlives what it points into; a copy is an explicit call that
//! allocates ([`Runtime::duplicate`](crate::Runtime::duplicate)).

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;

use cudagraph_runtime::DType;
use cudagraph_runtime::pool::PoolChunk;
use cudagraph_runtime::routing::{PoolRouter, RoutedBytes};
use cudagraph_runtime::{Error, Result};
pub(crate) use cudagraph_runtime::{Shape, SpecSource};

/// A contiguous, row-major tensor in device memory, ordered on the stream of the
/// [`Runtime`](crate::Runtime) that allocated it.
///
/// Not `Clone`: [`narrow_rows`](Self::narrow_rows) and [`reshape`](Self::reshape) return
/// [`TensorView`]s that borrow it, and a copy is explicit
/// ([`Runtime::duplicate`](crate::Runtime::duplicate)). Device contents are written by kernels
/// through shared references: the host never dereferences device memory, so this is outside
/// Rust's aliasing rules; what orders reads and writes is the stream. Only the runtime that
/// allocated a tensor accepts it (another runtime's stream is not ordered with this one's):
/// [`Runtime::check_device`](crate::Runtime::check_device).
pub struct Tensor {
    storage: Arc<RoutedBytes>,
    /// Byte offset of the first element within `storage`.
    offset: usize,
    shape: Shape,
    dtype: DType,
    ordinal: usize,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tensor")
            .field("shape", &self.shape)
            .field("dtype", &self.dtype)
            .field("device", &self.ordinal)
            .field("pool", &self.storage.is_pool())
            .finish()
    }
}

impl Tensor {
    pub(crate) fn from_storage(
        storage: RoutedBytes,
        shape: Shape,
        dtype: DType,
        ordinal: usize,
    ) -> Self {
        Self {
            storage: Arc::new(storage),
            offset: 0,
            shape,
            dtype,
            ordinal,
        }
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        self.shape.dims()
    }

    /// The shape as a value.
    pub fn shape_value(&self) -> Shape {
        self.shape
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.dims().len()
    }

    /// The size of dimension `i`, or an error naming `op` when the tensor has fewer dimensions.
    pub fn dim(&self, i: usize) -> Result<usize> {
        self.shape().get(i).copied().ok_or_else(|| {
            Error::invalid(
                "tensor",
                format!("dimension {i} requested of a rank-{} tensor", self.rank()),
            )
        })
    }

    /// The leading dimension (rows); 1 for a rank-0 tensor.
    pub fn rows(&self) -> usize {
        self.shape().first().copied().unwrap_or(1)
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.numel()
    }

    /// Size in bytes.
    pub fn size_in_bytes(&self) -> usize {
        self.numel() * self.dtype.size_in_bytes()
    }

    /// Bytes in one row (the product of the trailing dimensions).
    pub fn row_bytes(&self) -> usize {
        let rest: usize = self.shape().iter().skip(1).product();
        rest * self.dtype.size_in_bytes()
    }

    /// The CUDA device ordinal the bytes live on.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The device address of the first element, for kernel arguments.
    ///
    /// While the tensor's runtime captures a graph, the tensor's bytes are recorded as read by
    /// that graph, which keeps them alive as long as it can replay (dropping the tensor, or
    /// swapping it out of a `RefCell`, then frees nothing the graph reads).
    pub fn device_ptr(&self) -> u64 {
        self.storage.note_use();
        self.storage.device_ptr() + self.offset as u64
    }

    /// Whether the bytes live in a graph pool (allocated during a capture).
    pub fn is_pool_backed(&self) -> bool {
        self.storage.is_pool()
    }

    /// Whether `router` is the allocation router of the runtime that allocated this tensor.
    pub(crate) fn belongs_to(&self, router: &Arc<PoolRouter>) -> bool {
        Arc::ptr_eq(self.storage.router(), router)
    }

    /// Where the bytes lie when they are a block of a graph-pool chunk: the chunk and the byte
    /// offset of the first element in it.
    pub(crate) fn pool_location(&self) -> Option<(Arc<PoolChunk>, usize)> {
        self.storage
            .pool_location()
            .map(|(chunk, offset)| (chunk, offset + self.offset))
    }

    /// A tensor over `shape` at byte `offset` of `chunk` (a graph's output, rewritten by every
    /// replay): counted among the chunk's live tensors while it exists.
    pub(crate) fn pool_view(
        chunk: Arc<PoolChunk>,
        offset: usize,
        shape: Shape,
        dtype: DType,
        router: &Arc<PoolRouter>,
        ordinal: usize,
    ) -> Tensor {
        Tensor::from_storage(router.output_bytes(chunk, offset), shape, dtype, ordinal)
    }

    /// Another handle to the same bytes, for the runtime's own views (static input buffers);
    /// never handed to users as an owned tensor of pool memory.
    pub(crate) fn share(&self) -> Tensor {
        Tensor {
            storage: self.storage.clone(),
            offset: self.offset,
            shape: self.shape,
            dtype: self.dtype,
            ordinal: self.ordinal,
        }
    }

    /// A view of rows `start..start + len` (no copy), borrowing this tensor.
    pub fn narrow_rows(&self, start: usize, len: usize) -> Result<TensorView<'_>> {
        self.narrowed(start, len).map(TensorView::new)
    }

    /// The same bytes with another shape of the same number of elements (no copy), borrowing
    /// this tensor.
    pub fn reshape(&self, dims: &[usize]) -> Result<TensorView<'_>> {
        self.reshaped(dims).map(TensorView::new)
    }

    /// Rows `start..start + len` as a handle to the same bytes (crate-internal; see
    /// [`narrow_rows`](Self::narrow_rows)).
    pub(crate) fn narrowed(&self, start: usize, len: usize) -> Result<Tensor> {
        if self.rank() == 0 {
            return Err(Error::invalid("narrow_rows", "a rank-0 tensor has no rows"));
        }
        let end = start.checked_add(len).filter(|&end| end <= self.rows());
        if end.is_none() {
            return Err(Error::invalid(
                "narrow_rows",
                format!(
                    "rows {start}..{start}+{len} out of a tensor of {} rows",
                    self.rows()
                ),
            ));
        }
        // `start + len <= rows`, so the offset lies inside the tensor, whose bytes fit
        // `MAX_TENSOR_BYTES`: no overflow.
        Ok(Tensor {
            storage: self.storage.clone(),
            offset: self.offset + start * self.row_bytes(),
            shape: self.shape.with_rows(len)?,
            dtype: self.dtype,
            ordinal: self.ordinal,
        })
    }

    /// This tensor with another shape of the same number of elements, owned (no copy): a
    /// forward's `[b * q, vocab]` logits returned as `[b, q, vocab]`.
    pub fn into_shape(self, dims: &[usize]) -> Result<Tensor> {
        self.reshaped(dims)
    }

    /// The first elements of this tensor with shape `dims` (no more elements than it has), as a
    /// handle to the same bytes (crate-internal: a static input buffer seen with a bucketed
    /// dimension's size).
    pub(crate) fn prefix_view(&self, dims: &[usize]) -> Result<Tensor> {
        let shape = Shape::new(dims)?;
        if shape.numel() > self.numel() {
            return Err(Error::invalid(
                "prefix_view",
                format!("{dims:?} is larger than the tensor's {:?}", self.shape()),
            ));
        }
        Ok(Tensor {
            storage: self.storage.clone(),
            offset: self.offset,
            shape,
            dtype: self.dtype,
            ordinal: self.ordinal,
        })
    }

    /// The same bytes with another shape (crate-internal; see [`reshape`](Self::reshape)).
    pub(crate) fn reshaped(&self, dims: &[usize]) -> Result<Tensor> {
        let shape = Shape::new(dims)?;
        if shape.numel() != self.numel() {
            return Err(Error::invalid(
                "reshape",
                format!(
                    "{:?} has {} elements, {dims:?} has {}",
                    self.shape,
                    self.numel(),
                    shape.numel()
                ),
            ));
        }
        Ok(Tensor {
            shape,
            ..self.share()
        })
    }

    /// Checks the dtype, naming `op` in the error.
    pub fn expect_dtype(&self, op: &'static str, dtype: DType) -> Result<()> {
        if self.dtype == dtype {
            Ok(())
        } else {
            Err(Error::invalid(
                op,
                format!("expected a {dtype} tensor, got {}", self.dtype),
            ))
        }
    }

    /// Checks the shape, naming `op` in the error.
    pub fn expect_shape(&self, op: &'static str, dims: &[usize]) -> Result<()> {
        if self.shape() == dims {
            Ok(())
        } else {
            Err(Error::invalid(
                op,
                format!("expected shape {dims:?}, got {:?}", self.shape()),
            ))
        }
    }
}

impl SpecSource for Tensor {
    type DType = DType;

    fn spec_dtype(&self) -> DType {
        self.dtype
    }

    fn spec_dims(&self) -> &[usize] {
        self.shape()
    }
}

/// A view of a [`Tensor`]'s bytes (some of its rows, or another shape), borrowing it for `'a`.
///
/// It derefs to [`Tensor`], so every op takes it where it takes a tensor, but it is not an
/// owned tensor: it can't outlive what it views (an [`Output`](crate::Output) of a replay, say,
/// which the next replay rewrites). Views of a view borrow the same tensor.
///
/// Bind a view before passing it (`let rows = x.narrow_rows(0, n)?; ops::add(rt, &rows, y)`)
/// or write `&*x.narrow_rows(0, n)?`: inside `&(...)?` the compiler expects a `Tensor` from the
/// `?` and does not apply the deref.
pub struct TensorView<'a> {
    tensor: Tensor,
    _borrow: PhantomData<&'a Tensor>,
}

impl<'a> TensorView<'a> {
    pub(crate) fn new(tensor: Tensor) -> Self {
        Self {
            tensor,
            _borrow: PhantomData,
        }
    }

    /// Rows `start..start + len` of this view, borrowing the same tensor.
    pub fn narrow_rows(&self, start: usize, len: usize) -> Result<TensorView<'a>> {
        self.tensor.narrowed(start, len).map(TensorView::new)
    }

    /// This view with another shape of the same number of elements, borrowing the same tensor.
    pub fn reshape(&self, dims: &[usize]) -> Result<TensorView<'a>> {
        self.tensor.reshaped(dims).map(TensorView::new)
    }
}

impl Deref for TensorView<'_> {
    type Target = Tensor;

    fn deref(&self) -> &Tensor {
        &self.tensor
    }
}

impl fmt::Debug for TensorView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TensorView").field(&self.tensor).finish()
    }
}
