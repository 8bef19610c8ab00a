//! [`Islands`]: the ops of a graphed forward that run eagerly, between graph segments.
//!
//! A forward takes `islands: &Islands<L>` and wraps what a graph can't hold (a host
//! synchronisation, a launch that depends on a host value of the call, an upload larger than
//! candle's capture cache) in [`Islands::eager`]. The capture of each size is then cut at every
//! island: segment 1 is recorded, instantiated and launched, the island runs for real, segment 2
//! is recorded, and so on. A replay launches segment 1, runs island 1 on the current values of its
//! inputs, makes its output visible where segment 2 reads it, launches segment 2, ...
//!
//! How values cross an island, in every backend:
//! - **inputs** the capture computed (tensors in its own memory, which every replay rewrites)
//!   are recorded by address; before each run of the island they are copied into runner-owned
//!   buffers (shared by every island of the runner whose inputs have the same position, dtype
//!   and trailing shape), and the closure gets references to views of those copies: writing
//!   them changes nothing the forward reads. Every other input (a weight, a model's buffer, a
//!   static input of the runner) is handed over as it is, as in a direct call; what the island
//!   writes there is real. Rank-0 inputs the capture computed, and rank-0 outputs, are refused
//!   (give them shape `[1]`);
//! - **output**: the tensor the closure returns is copied into a runner-owned buffer and dropped;
//!   the next segment begins with a copy of that buffer into memory of its own (pool memory, or a
//!   graph allocation), which is what the forward gets back.
//!
//! Host values the islands read live at every call travel in `L`, the islands' *live
//! arguments*: the closure gets them as its last argument, from the runner's `run_live` (or the
//! value the runner was built with, for warm-ups and captures). Nothing an island computes on
//! the host is baked into a graph.
//!
//! What the types guarantee:
//! - an island's closure is stored by the runner and run at every replay, so it may borrow only
//!   what outlives the runner (`'i`, the runner's borrow of the model): a closure that borrows a
//!   tensor of the forward, or the islands themselves, does not compile;
//! - it gets its inputs as references, so it can't keep them (cudagraph's tensors and
//!   `CudaTensor`s are not `Clone`; a candle clone is a candle clone, as for outputs).

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;

use crate::backend::{Backend, Segments};
use crate::error::{BoxError, Error, Result};
use crate::ffi::{self, DeviceRange};
use crate::seal::Seal;
use crate::shape::Shape;

/// An island's closure with its inputs as a slice (the array of [`Islands::eager`], erased).
pub(crate) type IslandFn<'i, B, L> = Box<
    dyn Fn(
            &<B as Backend>::Device,
            &[&<B as Backend>::Tensor],
            &L,
        ) -> Result<<B as Backend>::Tensor>
        + 'i,
>;

/// The islands of a forward's call: see the [module docs](self).
///
/// `'i` is the borrow an island's closure may hold (the runner's borrow of the model: the macro
/// ties it to `&self`), `L` the live arguments every island reads, `B` the backend. A forward
/// called directly, outside a runner, takes [`Islands::direct`]: every island runs in place.
pub struct Islands<'i, 'l, B: Backend, L = ()> {
    live: &'l L,
    host: Option<&'l dyn IslandHost<'i, B, L>>,
    /// Invariant in `'i`: a closure of a shorter borrow can't pass for one of `'i`.
    _borrow: PhantomData<fn(&'i ()) -> &'i ()>,
}

impl<'i, 'l, B: Backend, L> Islands<'i, 'l, B, L> {
    /// The islands of a direct call of the forward (no runner): each runs at once, on `live`.
    pub fn direct(live: &'l L) -> Self {
        Self {
            live,
            host: None,
            _borrow: PhantomData,
        }
    }

    /// Islands a capture records (the runner's).
    pub(crate) fn recording(live: &'l L, host: &'l dyn IslandHost<'i, B, L>) -> Self {
        Self {
            live,
            host: Some(host),
            _borrow: PhantomData,
        }
    }

    /// The live arguments of this call.
    pub fn live(&self) -> &L {
        self.live
    }

    /// Runs `f` eagerly on `inputs`, between two graph segments: at every call of a runner's
    /// replay as in a direct call. `f` gets the device, references to (copies of) `inputs` and
    /// the live arguments; what it returns is what this returns (a copy of it, in a graph).
    ///
    /// Errors: `f`'s own; under capture also an island inside an island, or a segment the
    /// driver refuses. The error type is the forward's: cudagraph's `Error`, a `BoxError`, or
    /// candle's `Error` (which the runtime's converts into).
    pub fn eager<const K: usize, E, F>(
        &self,
        dev: &B::Device,
        inputs: [&B::Tensor; K],
        f: F,
    ) -> std::result::Result<B::Tensor, E>
    where
        E: From<Error> + Into<BoxError>,
        F: Fn(&B::Device, [&B::Tensor; K], &L) -> std::result::Result<B::Tensor, E> + 'i,
    {
        match self.host {
            None => f(dev, inputs, self.live),
            Some(host) => {
                let erased: IslandFn<'i, B, L> = Box::new(move |dev, ins, live| {
                    let ins: [&B::Tensor; K] = ins.try_into().map_err(|_| {
                        Error::invalid("island", "input count changed since the capture")
                    })?;
                    f(dev, ins, live).map_err(Error::from_user)
                });
                host.island(dev, &inputs, Some(erased), self.live)
                    .and_then(|out| {
                        out.ok_or_else(|| Error::invalid("island", "the island returned no output"))
                    })
                    .map_err(E::from)
            }
        }
    }

    /// A bare graph break: the segment being recorded ends here and the next begins, with
    /// nothing run between them (SGLang's `break_graph()`). Nothing happens in a direct call.
    /// The error converts with `?` into the forward's (cudagraph's, a `BoxError`, candle's).
    pub fn graph_break(&self, dev: &B::Device) -> Result<()> {
        match self.host {
            None => Ok(()),
            Some(host) => host.island(dev, &[], None, self.live).map(drop),
        }
    }
}

impl<B: Backend, L> std::fmt::Debug for Islands<'_, '_, B, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Islands")
            .field("recording", &self.host.is_some())
            .finish_non_exhaustive()
    }
}

/// What records islands during a capture (the runner's [`IslandRecorder`]).
pub(crate) trait IslandHost<'i, B: Backend, L> {
    /// Cuts the capture at an island running `f` on `inputs` (none: a bare break) and returns
    /// the output as the next segment reads it.
    fn island(
        &self,
        dev: &B::Device,
        inputs: &[&B::Tensor],
        f: Option<IslandFn<'i, B, L>>,
        live: &L,
    ) -> Result<Option<B::Tensor>>;
}

/// One input of an island.
pub(crate) enum IslandInput<B: Backend> {
    /// A tensor in memory the capture allocated (a segment's, rewritten by every replay):
    /// copied into a buffer of the runner's bank before each run, the island gets the copy.
    Copied {
        /// Where the segment's tensor lies: the same bytes at every replay.
        src: DeviceRange,
        /// The bank buffer its copy goes to, and the view's rows.
        buffer: usize,
        rows: usize,
    },
    /// Any other tensor (a weight, a model's buffer, a static input of the runner): handed to
    /// the island as it is (a shared handle the record keeps), so what the island writes to it
    /// is real, as in a direct call.
    Shared(B::Tensor),
}

/// An input of an island as the recorder finds it, before the cut.
enum Found<B: Backend> {
    Copy(B::DType, Shape, DeviceRange),
    Share(B::Tensor),
}

/// An island's output: the bank buffer it is copied to, its rows, and what it must be.
pub(crate) struct IslandOutput<D> {
    buffer: usize,
    rows: usize,
    dtype: D,
    shape: Shape,
}

/// One island of a captured size, as a replay runs it.
pub(crate) struct IslandRecord<'i, B: Backend, L> {
    /// `None`: a bare graph break.
    f: Option<IslandFn<'i, B, L>>,
    inputs: Vec<IslandInput<B>>,
    output: Option<IslandOutput<B::DType>>,
}

/// Whose bank buffer: the island's input at a position, or its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Input(usize),
    Output,
}

/// One buffer of the bank.
struct BankBuffer<B: Backend> {
    role: Role,
    dtype: B::DType,
    /// The dimensions after the rows.
    trailing: Shape,
    /// Rows it holds.
    rows: usize,
    tensor: B::Tensor,
    range: DeviceRange,
}

/// The runner's island buffers: inputs and outputs of every island, shared between islands
/// (islands of one replay run one at a time on one stream) whose buffers have the same role,
/// dtype and trailing shape, and hold enough rows.
pub(crate) struct IslandBank<B: Backend> {
    buffers: Vec<BankBuffer<B>>,
}

impl<B: Backend> Default for IslandBank<B> {
    fn default() -> Self {
        Self {
            buffers: Vec::new(),
        }
    }
}

impl<B: Backend> IslandBank<B> {
    /// Device bytes the bank holds.
    pub(crate) fn bytes(&self) -> usize {
        self.buffers.iter().map(|b| b.range.bytes()).sum()
    }

    /// The index of a buffer for `role` of `dtype` and `shape` (allocated outside any capture
    /// when no buffer holds it yet), and the rows its view takes. A rank-0 tensor is refused:
    /// the bank's buffers are row-major views, which would hand it back as `[1]`.
    fn buffer_for(
        &mut self,
        dev: &B::Device,
        role: Role,
        dtype: B::DType,
        shape: Shape,
    ) -> Result<(usize, usize)> {
        let dims = shape.dims();
        let Some((&rows, rest)) = dims.split_first() else {
            return Err(Error::invalid(
                "island",
                match role {
                    Role::Output => "an island returned a rank-0 tensor: return it with shape [1] (the next segment reads a copy of it, which keeps its shape)".to_owned(),
                    Role::Input(j) => format!("input {j} of an island is a rank-0 tensor the capture computed: give it shape [1] (the island gets a copy of it, which keeps its shape)"),
                },
            ));
        };
        let trailing = Shape::new(rest)?;
        let found = self.buffers.iter().position(|b| {
            b.role == role && b.dtype == dtype && b.trailing == trailing && b.rows >= rows
        });
        if let Some(index) = found {
            return Ok((index, rows));
        }
        let spec = crate::dispatch::InputSpec::new(dtype, trailing.dims())?;
        let tensor = B::zeros(Seal::new(), dev, &spec, rows)?;
        let range = B::range(Seal::new(), &tensor)?;
        self.buffers.push(BankBuffer {
            role,
            dtype,
            trailing,
            rows,
            tensor,
            range,
        });
        Ok((self.buffers.len() - 1, rows))
    }

    /// A view of `rows` rows of buffer `index`, and its bytes.
    fn view(&self, index: usize, rows: usize) -> Result<(B::Tensor, DeviceRange)> {
        let buffer = self
            .buffers
            .get(index)
            .ok_or_else(|| Error::invalid("island", "no such island buffer"))?;
        let view = B::narrow(Seal::new(), &buffer.tensor, rows)?;
        let range = B::range(Seal::new(), &view)?;
        Ok((view, range))
    }
}

/// Records the islands of one capture: the runner's [`IslandHost`].
pub(crate) struct IslandRecorder<'i, 'a, B: Backend, L> {
    pub(crate) segments: &'a dyn Segments,
    pub(crate) bank: &'a RefCell<IslandBank<B>>,
    pub(crate) records: RefCell<Vec<IslandRecord<'i, B, L>>>,
    /// Set while an island's closure runs (an island inside it is an error).
    pub(crate) running: Cell<bool>,
    /// Set when an island failed: the capture fails too (its segments and islands no longer
    /// match), whatever the forward does with the error.
    pub(crate) failed: Cell<bool>,
    /// Where it failed, for the error: a segment cut or begun, or an island's run.
    failed_in: Cell<Option<Place>>,
    /// Islands met so far (kept or not).
    met: Cell<usize>,
}

/// A part of a forward with islands, numbered from 1, for errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// The graphed ops before island `n` (`n - 1` islands before them).
    Segment(usize),
    /// The island `n` (bare breaks included).
    Island(usize),
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Place::Segment(1) => write!(f, "segment 1 (before the first island)"),
            Place::Segment(n) => write!(f, "segment {n} (after island {})", n - 1),
            Place::Island(n) => write!(f, "island {n}"),
        }
    }
}

impl<'i, 'a, B: Backend, L> IslandRecorder<'i, 'a, B, L> {
    /// A recorder cutting `segments`, with buffers from `bank`.
    pub(crate) fn new(segments: &'a dyn Segments, bank: &'a RefCell<IslandBank<B>>) -> Self {
        Self {
            segments,
            bank,
            records: RefCell::new(Vec::new()),
            running: Cell::new(false),
            failed: Cell::new(false),
            failed_in: Cell::new(None),
            met: Cell::new(0),
        }
    }

    /// The islands recorded, in order, or an error if one failed.
    pub(crate) fn finish(self) -> Result<Vec<IslandRecord<'i, B, L>>> {
        if self.failed.get() {
            return Err(Error::invalid(
                "island",
                "an island failed during the capture",
            ));
        }
        Ok(self.records.into_inner())
    }

    /// `error` (the forward's, at capture) with the part of the forward it came from, once an
    /// island was recorded or failed: nothing to add to a forward without islands.
    pub(crate) fn locate(&self, error: Error) -> Error {
        let met = self.met.get();
        let place = match self.failed_in.get() {
            Some(place) => place,
            None if met > 0 => Place::Segment(met + 1),
            None => return error,
        };
        Error::InForwardPart {
            place: place.to_string(),
            source: Box::new(error),
        }
    }

    fn record_island(
        &self,
        dev: &B::Device,
        inputs: &[&B::Tensor],
        f: Option<IslandFn<'i, B, L>>,
        live: &L,
    ) -> Result<Option<B::Tensor>> {
        let n = self.met.get() + 1;
        self.failed_in.set(Some(Place::Island(n)));
        let mut ranges = Vec::with_capacity(inputs.len());
        for t in inputs {
            B::check_tensor(Seal::new(), dev, "an island's input", t)?;
            ranges.push(B::range(Seal::new(), t)?);
        }
        self.failed_in.set(Some(Place::Segment(n)));
        self.segments.cut(Seal::new())?;
        // Between two segments: the device does not capture.
        self.failed_in.set(Some(Place::Island(n)));
        // Where the inputs lie: in the capture's memory (copied at each run), or elsewhere. Asked
        // after the cut: node mode knows a segment's allocations once it ended.
        let described = self.describe(inputs, &ranges);
        let ran = described.and_then(|described| self.run_now(dev, described, f.as_ref(), live));
        let resumed = self.segments.resume(Seal::new());
        let (inputs, output) = ran?;
        self.failed_in.set(Some(Place::Segment(n + 1)));
        resumed?;
        // The next segment begins with a copy of the output buffer in its own memory.
        let value = match &output {
            Some(out) => {
                let (view, _) = self.bank.borrow().view(out.buffer, out.rows)?;
                Some(B::capture_copy(Seal::new(), dev, &view)?)
            }
            None => None,
        };
        self.met.set(n);
        if self.segments.keeps_islands(Seal::new()) {
            self.records
                .borrow_mut()
                .push(IslandRecord { f, inputs, output });
        }
        self.failed_in.set(None);
        Ok(value)
    }

    /// Each input as the island will get it: a copy, for a tensor in the capture's own memory
    /// (`ranges`: where each lies), or a shared handle to any other.
    fn describe(&self, inputs: &[&B::Tensor], ranges: &[DeviceRange]) -> Result<Vec<Found<B>>> {
        inputs
            .iter()
            .zip(ranges)
            .map(|(t, &range)| {
                Ok(if self.segments.owns(Seal::new(), range) {
                    Found::Copy(B::dtype(Seal::new(), t), B::shape(Seal::new(), t)?, range)
                } else {
                    Found::Share(B::share(Seal::new(), t)?)
                })
            })
            .collect()
    }

    /// The island's first run: its inputs copied into the bank, `f` on views of them, its
    /// output copied into the bank.
    #[allow(clippy::type_complexity)]
    fn run_now(
        &self,
        dev: &B::Device,
        described: Vec<Found<B>>,
        f: Option<&IslandFn<'i, B, L>>,
        live: &L,
    ) -> Result<(Vec<IslandInput<B>>, Option<IslandOutput<B::DType>>)> {
        let mut inputs = Vec::with_capacity(described.len());
        {
            let mut bank = self.bank.borrow_mut();
            for (j, found) in described.into_iter().enumerate() {
                inputs.push(match found {
                    Found::Copy(dtype, shape, src) => {
                        let (buffer, rows) = bank.buffer_for(dev, Role::Input(j), dtype, shape)?;
                        IslandInput::Copied { src, buffer, rows }
                    }
                    Found::Share(t) => IslandInput::Shared(t),
                });
            }
        }
        let Some(f) = f else {
            return Ok((inputs, None));
        };
        let bank = self.bank.borrow();
        let out = run_island(dev, &bank, &inputs, f, live)?;
        drop(bank);
        let dtype = B::dtype(Seal::new(), &out);
        let shape = B::shape(Seal::new(), &out)?;
        let (buffer, rows) = self
            .bank
            .borrow_mut()
            .buffer_for(dev, Role::Output, dtype, shape)?;
        let output = IslandOutput {
            buffer,
            rows,
            dtype,
            shape,
        };
        store_output(dev, &self.bank.borrow(), &output, &out)?;
        Ok((inputs, Some(output)))
    }
}

impl<'i, B: Backend, L> IslandHost<'i, B, L> for IslandRecorder<'i, '_, B, L> {
    fn island(
        &self,
        dev: &B::Device,
        inputs: &[&B::Tensor],
        f: Option<IslandFn<'i, B, L>>,
        live: &L,
    ) -> Result<Option<B::Tensor>> {
        if self.running.get() {
            self.failed.set(true);
            return Err(Error::invalid(
                "island",
                "an island inside an island: an island's closure runs eagerly already",
            ));
        }
        self.running.set(true);
        let result = self.record_island(dev, inputs, f, live);
        self.running.set(false);
        if result.is_err() {
            self.failed.set(true);
        }
        result
    }
}

/// The islands of a warm-up that records nothing (graph-memory-node mode): each runs in place,
/// as in a direct call, numbered so that an error names the island it came from.
pub(crate) struct InPlace {
    met: Cell<usize>,
}

impl InPlace {
    /// No island met yet.
    pub(crate) fn new() -> Self {
        Self { met: Cell::new(0) }
    }
}

impl<'i, B: Backend, L> IslandHost<'i, B, L> for InPlace {
    fn island(
        &self,
        dev: &B::Device,
        inputs: &[&B::Tensor],
        f: Option<IslandFn<'i, B, L>>,
        live: &L,
    ) -> Result<Option<B::Tensor>> {
        let n = self.met.get() + 1;
        self.met.set(n);
        let Some(f) = f else {
            return Ok(None);
        };
        f(dev, inputs, live)
            .map(Some)
            .map_err(|e| Error::InForwardPart {
                place: Place::Island(n).to_string(),
                source: Box::new(e),
            })
    }
}

/// Copies the island's copied inputs into their bank buffers and runs `f` on views of them
/// (and on the shared inputs as they are).
fn run_island<B: Backend, L>(
    dev: &B::Device,
    bank: &IslandBank<B>,
    inputs: &[IslandInput<B>],
    f: &IslandFn<'_, B, L>,
    live: &L,
) -> Result<B::Tensor> {
    let stream = B::stream(Seal::new(), dev);
    let mut views = Vec::with_capacity(inputs.len());
    for input in inputs {
        views.push(match input {
            IslandInput::Copied { src, buffer, rows } => {
                let (view, dst) = bank.view(*buffer, *rows)?;
                ffi::copy_d2d(&stream, dst, *src).map_err(Error::driver("cuMemcpyDtoDAsync"))?;
                Some(view)
            }
            IslandInput::Shared(_) => None,
        });
    }
    let refs = inputs
        .iter()
        .zip(&views)
        .map(|(input, view)| match (input, view) {
            (IslandInput::Shared(t), _) | (IslandInput::Copied { .. }, Some(t)) => Ok(t),
            (IslandInput::Copied { .. }, None) => {
                Err(Error::invalid("island", "an input copy is missing"))
            }
        })
        .collect::<Result<Vec<&B::Tensor>>>()?;
    let out = f(dev, &refs, live)?;
    B::check_tensor(Seal::new(), dev, "an island's output", &out)?;
    Ok(out)
}

/// Checks `out` against what the island returned at capture and copies it into its buffer.
fn store_output<B: Backend>(
    dev: &B::Device,
    bank: &IslandBank<B>,
    output: &IslandOutput<B::DType>,
    out: &B::Tensor,
) -> Result<()> {
    let dtype = B::dtype(Seal::new(), out);
    let shape = B::shape(Seal::new(), out)?;
    if dtype != output.dtype || shape != output.shape {
        return Err(Error::invalid(
            "island",
            format!(
                "the island returned {dtype:?} {:?}, at capture {:?} {:?}: an island's output keeps its dtype and shape at every call of a size",
                shape.dims(),
                output.dtype,
                output.shape.dims()
            ),
        ));
    }
    let (_, dst) = bank.view(output.buffer, output.rows)?;
    let src = B::range(Seal::new(), out)?;
    ffi::copy_d2d(&B::stream(Seal::new(), dev), dst, src)
        .map_err(Error::driver("cuMemcpyDtoDAsync"))
}

impl<B: Backend, L> IslandRecord<'_, B, L> {
    /// Whether this is a bare graph break (nothing runs between its segments).
    pub(crate) fn is_break(&self) -> bool {
        self.f.is_none()
    }

    /// Runs the island once in a replay (after the segment before it was launched): inputs
    /// copied in, `f`, its output checked and copied to where the next segment reads it.
    pub(crate) fn replay(&self, dev: &B::Device, bank: &IslandBank<B>, live: &L) -> Result<()> {
        let (Some(f), Some(output)) = (&self.f, &self.output) else {
            return Ok(());
        };
        let out = run_island(dev, bank, &self.inputs, f, live)?;
        store_output(dev, bank, output, &out)
    }
}
