//! Loading cuBLAS and cuBLASLt while the context is created (issue 29's cold-start lever).
//!
//! Under dynamic loading (cudarc's default) the first cuBLAS call of a process opens
//! libcublas and libcublasLt, several hundred MB of shared libraries, inside the first GEMM:
//! in a fresh process that is inside the first forward or the first capture.
//! [`Runtime::new`](crate::Runtime::new) starts their loading on a thread of its own before it
//! creates the context, so the two overlap. Host work only (no CUDA call); skipped when the GEMM
//! backend is the built-in kernel, and turned off with `CUDAGRAPH_PRELOAD=off` (to measure the
//! lever: `decode_bench --serve-start` with and without it).

use crate::gemm::GemmBackend;

/// The variable that turns the preload off (`off`, `0` or `false`).
pub const PRELOAD_ENV: &str = "CUDAGRAPH_PRELOAD";

/// Whether a value of [`PRELOAD_ENV`] leaves the preload on (unset, empty or anything but
/// `off`, `0`, `false`, case-insensitive).
pub fn preload_enabled(value: Option<&str>) -> bool {
    !matches!(
        value.map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        Some("off" | "0" | "false")
    )
}

/// Starts loading the GEMM libraries on a background thread when the environment asks for
/// cuBLAS (`CUDAGRAPH_GEMM` not `builtin`) and does not turn the preload off.
pub(crate) fn start(gemm: GemmBackend) {
    if gemm == GemmBackend::Builtin || !preload_enabled(std::env::var(PRELOAD_ENV).ok().as_deref())
    {
        return;
    }
    crate::ffi::preload_gemm_libraries();
}

#[cfg(test)]
mod tests {
    use super::preload_enabled;

    #[test]
    fn the_preload_is_on_unless_turned_off() {
        for on in [None, Some(""), Some("on"), Some("1"), Some("yes")] {
            assert!(preload_enabled(on), "{on:?}");
        }
        for off in [
            Some("off"),
            Some(" OFF "),
            Some("0"),
            Some("false"),
            Some("False"),
        ] {
            assert!(!preload_enabled(off), "{off:?}");
        }
    }
}
