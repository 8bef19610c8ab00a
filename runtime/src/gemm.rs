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

/// The environment variable that sets the initial [`GemmBackend`] of every runtime.
pub const GEMM_ENV: &str = "CUDAGRAPH_GEMM";

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
    use super::GemmBackend;

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
