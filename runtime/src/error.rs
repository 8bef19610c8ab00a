//! One typed error enum for the whole runtime.
//!
//! Capture errors name the function, the size and, where the runtime knows it, the op that was
//! executing and its source location, so a failed capture never reads as a bare
//! "operation not permitted when stream is capturing".

use std::fmt;
use std::panic::Location;

use cudarc::driver::DriverError;

/// A `Result` whose error is the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed error coming from user code (the eager forward function).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The op the runtime was executing when something failed, with the caller's source location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpSite {
    /// Name of the op (`"rms_norm"`, `"linear"`, `"alloc"`, ...).
    pub op: &'static str,
    /// Where the op was called from (the user's model code).
    pub location: &'static Location<'static>,
}

impl fmt::Display for OpSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` at {}:{}",
            self.op,
            self.location.file(),
            self.location.line()
        )
    }
}

/// Everything that can go wrong in the runtime (and in the native library, `cudagraph-kernels`,
/// which returns the same type).
///
/// Every fallible call returns it; none panics. A machine without a GPU gets
/// [`NoDriver`](Error::NoDriver) (or [`NoDevice`](Error::NoDevice)) from the native library's
/// `Runtime::new`, which a program can tell apart from real failures (its docs show how). Errors
/// say what went wrong in words:
///
/// ```
/// use cudagraph_runtime::{DType, Error, InputSpec};
///
/// let err = InputSpec::new(DType::F32, &[1; 9]).unwrap_err();
/// assert!(matches!(err, Error::InvalidArgument { .. }));
/// assert_eq!(err.to_string(), "InputSpec: too many dimensions");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No CUDA driver library could be loaded on this machine.
    #[error("no CUDA driver: {0}")]
    NoDriver(String),
    /// The driver loaded, but the requested device does not exist.
    #[error("CUDA device {ordinal} not found ({count} device(s) visible)")]
    NoDevice {
        /// The ordinal asked for.
        ordinal: usize,
        /// How many devices the driver reports.
        count: usize,
    },
    /// A CUDA driver call failed.
    #[error("CUDA driver error in {call}: {source}")]
    Driver {
        /// The runtime operation that made the call.
        call: &'static str,
        /// The driver's error.
        #[source]
        source: DriverError,
    },
    /// A call into a CUDA library (cuBLAS, cuBLASLt, NCCL) failed.
    #[error("{library} error in {call}: {message}")]
    Library {
        /// The library (`"cuBLAS"`, ...).
        library: &'static str,
        /// The operation that made the call.
        call: &'static str,
        /// The library's status.
        message: String,
    },
    /// NVRTC failed to compile a kernel module.
    #[error("NVRTC failed to compile kernel module `{module}`: {log}")]
    Compile {
        /// The module's name.
        module: &'static str,
        /// NVRTC's log.
        log: String,
    },
    /// A needed CUDA library (NVRTC, cuBLAS) is not installed.
    #[error("CUDA library `{library}` not found; install it or add its folder to LD_LIBRARY_PATH")]
    MissingLibrary {
        /// The library's name.
        library: &'static str,
    },
    /// An argument was invalid (shape, dtype, device, ...).
    #[error("{op}: {message}")]
    InvalidArgument {
        /// The op or API that rejected it.
        op: &'static str,
        /// What is wrong, and what to do.
        message: String,
    },
    /// An operation that is illegal while the stream captures was attempted.
    #[error("{what} is not allowed while capturing a CUDA graph{}", .site.map(|s| format!(" (during {s})")).unwrap_or_default())]
    IllegalDuringCapture {
        /// What was attempted (`"a device-to-host copy"`, `"a synchronize"`...).
        what: &'static str,
        /// The op that was executing, if known.
        site: Option<OpSite>,
    },
    /// The graph pool had no room for an allocation made during capture.
    #[error(
        "graph pool exhausted: {requested} bytes requested with {available} bytes free of {capacity}; the forward allocated more under capture than in its warm-up run (is it deterministic?)"
    )]
    PoolExhausted {
        /// Bytes asked for.
        requested: usize,
        /// Bytes free in the chunk.
        available: usize,
        /// The chunk's size.
        capacity: usize,
    },
    /// Capturing one size of a function failed.
    #[error("capturing `{function}` at size {size} failed{}{}: {source}", .site.map(|s| format!(" during {s}")).unwrap_or_default(), .source.capture_cause().map(|c| format!(": {c}")).unwrap_or_default())]
    Capture {
        /// The captured function's name.
        function: &'static str,
        /// The batch size being captured.
        size: usize,
        /// The op that was executing when it failed, if known.
        site: Option<OpSite>,
        /// What failed.
        #[source]
        source: Box<Error>,
    },
    /// Where in a forward with islands its capture failed: a segment (the graphed ops between
    /// two islands, numbered from 1) or an island (numbered from 1 in call order, bare graph
    /// breaks included).
    #[error("in {place}: {source}")]
    InForwardPart {
        /// `"segment 3 (after island 2)"`, `"island 2"`.
        place: String,
        /// What failed there.
        #[source]
        source: Box<Error>,
    },
    /// A tensor of another runtime (another stream or device) was given to this one.
    #[error("{op}: the tensor is not this runtime's: {reason}; copy it with `Runtime::copy_from`")]
    ForeignTensor {
        /// The op or API that refused it.
        op: &'static str,
        /// Where the tensor lives instead.
        reason: String,
    },
    /// Tensors allocated during a capture outlived it (the forward stored them outside itself),
    /// or graph-pool memory is still in use where it must not be.
    #[error(
        "`{function}`: {count} tensor(s) in graph-pool memory are still alive {during}; a capture's tensors are rewritten by every replay and unmapped by `release_memory`, so they must not outlive the forward (copy what you keep with `Runtime::duplicate`)"
    )]
    PoolTensorsAlive {
        /// The captured function.
        function: &'static str,
        /// How many are alive.
        count: usize,
        /// When the check ran (`"after the capture"`, `"at release_memory"`).
        during: &'static str,
    },
    /// Graph-memory-node capture (cudarc, candle): allocations the capture made were not freed
    /// in it: the forward kept tensors it allocated.
    #[error(
        "`{function}`: {count} allocation(s) ({bytes} bytes) made under capture outlived it: the forward kept tensors it allocated (a cache grown with `cat`, a buffer stored in the model), which every replay would rewrite; allocate them before capturing and write them in place"
    )]
    AllocationsEscaped {
        /// The captured function.
        function: &'static str,
        /// How many allocations.
        count: usize,
        /// Their bytes.
        bytes: usize,
    },
    /// Graph-memory-node capture (cudarc, candle): the driver refused a call under capture with
    /// "invalid argument", which is what freeing memory allocated outside the capture gets
    /// (cudarc records the refused free and reports it at its next call, named here).
    #[error(
        "{source} (under capture this is most often a free of memory allocated outside the capture: the forward dropped a buffer it did not allocate in this run; the driver refuses it and cudarc reports the refusal at its next call)"
    )]
    ForeignFreeUnderCapture {
        /// The error the forward returned.
        #[source]
        source: Box<Error>,
    },
    /// A size of a lazily captured runner failed to capture earlier (under
    /// [`OnCaptureError::Abort`](crate::OnCaptureError::Abort)); it is not retried.
    #[error("capturing `{function}` at size {size} failed earlier and is not retried: {message}")]
    CaptureFailedEarlier {
        /// The captured function.
        function: &'static str,
        /// The size.
        size: usize,
        /// The first failure.
        message: String,
    },
    /// A runner's memory is released: call `resume()` before `run()`.
    #[error(
        "the graphs of `{function}` have their memory released: call `resume()` before `run()`"
    )]
    Released {
        /// The captured function.
        function: &'static str,
    },
    /// The user's forward function returned an error that is not the runtime's.
    #[error("forward function failed: {0}")]
    Forward(#[source] BoxError),
}

/// CUDA's codes for "not allowed while the stream captures".
fn is_capture_refusal(e: &DriverError) -> bool {
    use cudarc::driver::sys::CUresult::*;
    matches!(
        e.0,
        CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
            | CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
            | CUDA_ERROR_STREAM_CAPTURE_IMPLICIT
            | CUDA_ERROR_STREAM_CAPTURE_ISOLATION
            | CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD
            | CUDA_ERROR_CAPTURED_EVENT
            | CUDA_ERROR_STREAM_CAPTURE_UNJOINED
            | CUDA_ERROR_STREAM_CAPTURE_UNMATCHED
    )
}

impl Error {
    /// Why a capture broke, in plain words, when the error says: a synchronisation, a host copy,
    /// a free of memory allocated outside the capture, an allocation from the driver, or
    /// another operation a capture can't record.
    pub fn capture_cause(&self) -> Option<&'static str> {
        match self {
            Error::ForeignFreeUnderCapture { .. } => Some(
                "a free of memory allocated outside the capture (a device buffer dropped while the stream recorded)",
            ),
            Error::AllocationsEscaped { .. } => {
                Some("tensors allocated under capture outlived it (kept by the forward)")
            }
            Error::IllegalDuringCapture { what, .. } => Some(match *what {
                w if w.contains("free") => {
                    "a free of memory allocated outside the capture (a device buffer dropped while the stream recorded)"
                }
                w if w.contains("synchronize") => {
                    "a synchronisation (the stream can't wait while it records; run it in an island: `islands.eager(..)`)"
                }
                w if w.contains("copy") && (w.contains("host") || w.contains("device-to-host")) => {
                    "a host copy (host memory can't be read or written while the stream records; run it in an island: `islands.eager(..)`)"
                }
                _ => {
                    "an operation a capture can't record (run it in an island: `islands.eager(..)`)"
                }
            }),
            Error::PoolExhausted { .. } => {
                Some("the forward allocated more under capture than in its warm-up")
            }
            Error::Driver { call, source }
                if call.contains("EndCapture")
                    && source.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_INVALID_VALUE =>
            {
                Some(
                    "the driver refused the recorded graph: most often a free of memory allocated outside the capture (a device buffer dropped while the stream recorded)",
                )
            }
            Error::Driver { call, source } => {
                // A drop records its error for a later call. During a capture the drop that
                // fails is a free of memory allocated outside it, which the driver refuses as an
                // invalid value or a capture refusal; any other deferred error (an
                // out-of-memory, an illegal address) has another cause, named by the driver.
                let deferred = call.starts_with("deferred");
                let refused_free =
                    deferred && source.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_INVALID_VALUE;
                if !(refused_free || is_capture_refusal(source)) {
                    return None;
                }
                Some(if deferred || call.contains("Free") {
                    "a free of memory allocated outside the capture (a device buffer dropped while the stream recorded)"
                } else if call.contains("Alloc") {
                    "an allocation from the driver (allocate through `Runtime::alloc`, which serves captures from the graph pool)"
                } else if call.contains("ynchronize") {
                    "a synchronisation (the stream can't wait while it records; run it in an island: `islands.eager(..)`)"
                } else if call.contains("Memcpy")
                    && (call.contains("DtoH") || call.contains("HtoD"))
                {
                    "a host copy (host memory can't be read or written while the stream records; run it in an island: `islands.eager(..)`)"
                } else {
                    "an operation a capture can't record (run it in an island: `islands.eager(..)`)"
                })
            }
            Error::Capture { source, .. } | Error::InForwardPart { source, .. } => {
                source.capture_cause()
            }
            _ => None,
        }
    }

    /// Wraps a driver error with the call that produced it.
    pub fn driver(call: &'static str) -> impl FnOnce(DriverError) -> Error {
        move |source| Error::Driver { call, source }
    }

    /// Builds an [`Error::InvalidArgument`].
    pub fn invalid(op: &'static str, message: impl Into<String>) -> Error {
        Error::InvalidArgument {
            op,
            message: message.into(),
        }
    }

    /// Converts an error from user code; a runtime error boxed by the user comes back unboxed.
    pub fn from_user<E: Into<BoxError>>(error: E) -> Error {
        let boxed: BoxError = error.into();
        match boxed.downcast::<Error>() {
            Ok(own) => *own,
            Err(other) => Error::Forward(other),
        }
    }
}

/// Converts the result of a user's forward function into the runtime's `Result`.
///
/// The code `#[cuda_graph]` generates calls this, so a forward may return any error type that
/// converts into a boxed error (`anyhow::Error`, `cudagraph::Error`, `candle_core::Error`,
/// cudarc's `DriverError`, `Box<dyn Error>` ...). `T` is the backend's tensor type.
#[diagnostic::on_unimplemented(
    message = "a `#[cuda_graph]` function must return `Result<Tensor, E>`",
    label = "returns `{Self}`"
)]
pub trait ForwardResult<T> {
    /// Converts into the runtime's result.
    fn into_forward_result(self) -> Result<T>;
}

impl<T, E: Into<BoxError>> ForwardResult<T> for std::result::Result<T, E> {
    fn into_forward_result(self) -> Result<T> {
        self.map_err(Error::from_user)
    }
}

/// Converts a forward function's result into the runtime's (see [`ForwardResult`]).
pub fn forward_result<T, R: ForwardResult<T>>(result: R) -> Result<T> {
    result.into_forward_result()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cudarc::driver::sys::CUresult;

    /// Only a capture refusal recorded by a drop is blamed on a free during capture.
    #[test]
    fn deferred_errors_are_blamed_by_their_code() {
        let deferred = |code| Error::Driver {
            call: "deferred (recorded by a drop)",
            source: DriverError(code),
        };
        assert_eq!(
            deferred(CUresult::CUDA_ERROR_OUT_OF_MEMORY).capture_cause(),
            None
        );
        assert_eq!(
            deferred(CUresult::CUDA_ERROR_ILLEGAL_ADDRESS).capture_cause(),
            None
        );
        for code in [
            CUresult::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
            // What the H200's driver records for a cuMemFreeAsync of outside memory (run 29).
            CUresult::CUDA_ERROR_INVALID_VALUE,
        ] {
            let free = deferred(code).capture_cause();
            assert!(free.is_some_and(|c| c.contains("free")), "{free:?}");
        }
    }
}
