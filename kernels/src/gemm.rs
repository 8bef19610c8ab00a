//! Which GEMM the linear ops use: cuBLAS, or the built-in kernel that needs no library.
//!
//! cuBLAS is the fast path (tensor cores). The built-in kernel (`linear_bf16`, compiled by
//! NVRTC like every other kernel) uses neither tensor cores nor shared memory: it is for
//! machines where cuBLAS can't be loaded, and for runs under `compute-sanitizer --tool
//! racecheck`, whose shared-memory model reports hazards inside cuBLAS's own Hopper kernels
//! (`nvjet_sm90_*`, tiles moved by the tensor-memory accelerator) whoever calls them: PyTorch's
//! `F.linear` gets the same report (see `docs/gpu-runs.md`, run 19).
//!
//! The choice belongs to a [`Runtime`](crate::Runtime) (`set_gemm_backend`), initially from
//! `CUDAGRAPH_GEMM` (`auto`, `cublas` or `builtin`). A captured graph keeps the GEMM it was
//! recorded with; a new choice applies to later eager calls and captures.
//!
//! ## cuBLAS through cuBLASLt
//!
//! `cublas` and `auto` run each GEMM through cuBLASLt ([`Runtime::gemm_lt_bf16_tn`]) with an
//! algorithm chosen once per GEMM shape and *bucket* of `n` (the batch rows: `1..=16`, `..=32`,
//! `..=64`, then four buckets per octave: `..=80`, `..=96`, `..=112`, `..=128`, `..=160`, ...),
//! not once per `n` as `cublasGemmEx` does: capturing a decoder's 35 batch sizes asks
//! cuBLASLt's heuristic 11 times per GEMM shape instead of 35. Before a
//! bucket's algorithm runs at an `n`, `cublasLtMatmulAlgoCheck` confirms it is valid there
//! (else that exact shape is queried). The choices are kept on disk next to the kernel CUBINs
//! (`$CUDAGRAPH_CACHE_DIR`, ...; one small file per GPU and cuBLASLt version), so a second
//! process queries nothing. [`Runtime::gemm_algo_stats`] counts the queries and the
//! algorithms read from disk.
//!
//! Where libcublasLt can't be loaded (a warning, once), or with `CUDAGRAPH_CUBLASLT=off`
//! ([`Runtime::set_cublaslt`]), GEMMs go through `cublasGemmEx` as before.
//!
//! [`Runtime::gemm_lt_bf16_tn`]: crate::Runtime::gemm_lt_bf16_tn
//! [`Runtime::gemm_algo_stats`]: crate::Runtime::gemm_algo_stats
//! [`Runtime::set_cublaslt`]: crate::Runtime::set_cublaslt

/// Bytes of the cuBLAS workspace a runtime owns (and of its cuBLASLt workspace). A workspace
/// set up front means cuBLAS never allocates from the driver, which would be illegal during
/// capture.
pub const CUBLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// The environment variable that sets the initial [`GemmBackend`] of every runtime.
pub const GEMM_ENV: &str = "CUDAGRAPH_GEMM";

/// The environment variable that turns the cuBLASLt path of `cublas` and `auto` off (`off` or
/// `0`): GEMMs then go through `cublasGemmEx`, the path taken where libcublasLt can't be loaded.
pub const CUBLASLT_ENV: &str = "CUDAGRAPH_CUBLASLT";

/// Whether `CUDAGRAPH_CUBLASLT` leaves the cuBLASLt path on (unset: on). An unknown value is
/// reported (a `tracing` warning) and ignored.
pub fn cublaslt_from_env() -> bool {
    let value = std::env::var(CUBLASLT_ENV).ok();
    match parse_switch(CUBLASLT_ENV, value.as_deref()) {
        Ok(on) => on,
        Err(message) => {
            tracing::warn!("{message}; using `on`");
            true
        }
    }
}

/// Parses an on/off variable: `on`/`1`/`true` or `off`/`0`/`false` (case-insensitive, spaces
/// ignored); unset or empty is on.
fn parse_switch(name: &str, value: Option<&str>) -> Result<bool, String> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(true);
    };
    match value.to_ascii_lowercase().as_str() {
        "on" | "1" | "true" => Ok(true),
        "off" | "0" | "false" => Ok(false),
        _ => Err(format!("{name}={value:?} is not `on` or `off`")),
    }
}

/// A bf16 GEMM in cuBLAS's column-major terms, for [`Runtime::gemm_lt_bf16_tn`]:
/// `C (m x n, ldc) = op(A) * B` with `op(A) = A^T`, `A` stored `k x m` (`lda`), `B` stored
/// `k x n` (`ldb`, not transposed); f32 accumulation, `alpha = 1`, `beta = 0`.
///
/// A linear layer `y [rows, out] = x [rows, in] @ w [out, in]^T` is `m = out`, `n = rows`,
/// `k = in`, `A = w`, `B = x`, `C = y`, `lda = ldb = k`, `ldc = m`.
///
/// [`Runtime::gemm_lt_bf16_tn`]: crate::Runtime::gemm_lt_bf16_tn
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmTnBf16 {
    /// Rows of `C` (and of `op(A)`).
    pub m: i32,
    /// Columns of `C` (and of `B`): the batch rows of a linear layer, the dimension whose
    /// bucket chooses the algorithm.
    pub n: i32,
    /// The shared dimension.
    pub k: i32,
    /// Address of `A` (bf16), at least `lda * m` elements.
    pub a: u64,
    /// Leading dimension of `A` (>= k).
    pub lda: i32,
    /// Address of `B` (bf16), at least `ldb * n` elements.
    pub b: u64,
    /// Leading dimension of `B` (>= k).
    pub ldb: i32,
    /// Address of `C` (bf16), at least `ldc * n` elements; written.
    pub c: u64,
    /// Leading dimension of `C` (>= m).
    pub ldc: i32,
}

/// What [`Runtime::gemm_lt_bf16_tn`] did.
///
/// [`Runtime::gemm_lt_bf16_tn`]: crate::Runtime::gemm_lt_bf16_tn
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LtOutcome {
    /// The GEMM is enqueued on the runtime's stream.
    Enqueued,
    /// Nothing was enqueued: libcublasLt can't be loaded or the runtime's cuBLASLt path is off
    /// ([`Runtime::set_cublaslt`](crate::Runtime::set_cublaslt)); the caller uses
    /// `cublasGemmEx`.
    Unavailable,
}

/// The GEMM behind the linear ops of a runtime.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GemmBackend {
    /// cuBLAS when it can be loaded, else the built-in kernel (with a warning, once).
    #[default]
    Auto,
    /// cuBLAS only: a machine without it gets [`Error::MissingLibrary`](crate::Error).
    Cublas,
    /// The built-in kernel: no library but NVRTC, no tensor cores, no shared memory.
    Builtin,
}

impl GemmBackend {
    /// The backend `CUDAGRAPH_GEMM` names; [`Auto`](Self::Auto) when unset. An unknown value
    /// is reported (a `tracing` warning) and ignored.
    pub fn from_env() -> Self {
        let value = std::env::var(GEMM_ENV).ok();
        match Self::parse(value.as_deref()) {
            Ok(backend) => backend,
            Err(message) => {
                tracing::warn!("{message}; using `auto`");
                Self::Auto
            }
        }
    }

    /// Parses a value of `CUDAGRAPH_GEMM` (case-insensitive, surrounding spaces ignored);
    /// `None` or an empty value is [`Auto`](Self::Auto).
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(Self::Auto);
        };
        match value.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cublas" => Ok(Self::Cublas),
            "builtin" => Ok(Self::Builtin),
            _ => Err(format!(
                "{GEMM_ENV}={value:?} is not one of `auto`, `cublas`, `builtin`"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{GemmBackend, parse_switch};

    #[test]
    fn parses_on_and_off() {
        for on in [None, Some(""), Some("on"), Some(" 1 "), Some("TRUE")] {
            assert_eq!(parse_switch("X", on), Ok(true), "{on:?}");
        }
        for off in [Some("off"), Some("0"), Some(" False")] {
            assert_eq!(parse_switch("X", off), Ok(false), "{off:?}");
        }
        let err = parse_switch("CUDAGRAPH_CUBLASLT", Some("maybe")).unwrap_err();
        assert!(
            err.contains("CUDAGRAPH_CUBLASLT") && err.contains("maybe"),
            "{err}"
        );
    }

    #[test]
    fn parses_the_three_values_and_rejects_others() {
        assert_eq!(GemmBackend::parse(None), Ok(GemmBackend::Auto));
        assert_eq!(GemmBackend::parse(Some("  ")), Ok(GemmBackend::Auto));
        assert_eq!(GemmBackend::parse(Some("auto")), Ok(GemmBackend::Auto));
        assert_eq!(
            GemmBackend::parse(Some(" cuBLAS ")),
            Ok(GemmBackend::Cublas)
        );
        assert_eq!(
            GemmBackend::parse(Some("BUILTIN")),
            Ok(GemmBackend::Builtin)
        );
        let err = GemmBackend::parse(Some("cutlass")).unwrap_err();
        assert!(
            err.contains("CUDAGRAPH_GEMM") && err.contains("cutlass"),
            "{err}"
        );
    }
}
