//! Loading cuBLAS and cuBLASLt while the context is created (issue 29's cold-start lever),
//! opt-in with `CUDAGRAPH_PRELOAD=on`.
//!
//! Under dynamic loading (cudarc's default) the first cuBLAS call of a process opens
//! libcublas and libcublasLt, several hundred MB of shared libraries, inside the first GEMM:
//! in a fresh process that is inside the first forward or the first capture. With the preload
//! on, [`Runtime::new`](crate::Runtime::new) opens them on a detached thread of its own before
//! it creates the context, so the two may overlap. Host work only (no CUDA call); skipped when
//! the GEMM backend is the built-in kernel. Off by default until a GPU run shows a gain: glibc's
//! loader lock, which every `dlopen` and `dlsym` takes, may make the context's creation (whose
//! driver symbols cudarc resolves at first call) wait for the load instead of overlapping it.
//! `decode_bench --serve-start` with and without it measures the lever.

use crate::gemm::GemmBackend;

/// The variable that turns the preload on (`on`, `1` or `true`); off when unset.
pub const PRELOAD_ENV: &str = "CUDAGRAPH_PRELOAD";

/// Whether a value of [`PRELOAD_ENV`] turns the preload on (`on`, `1`, `true`,
/// case-insensitive, surrounding spaces ignored); anything else, or no value, leaves it off.
pub fn preload_enabled(value: Option<&str>) -> bool {
    matches!(
        value.map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        Some("on" | "1" | "true")
    )
}

/// Starts loading the GEMM libraries on a background thread when the environment turns the
/// preload on and may use cuBLAS (`CUDAGRAPH_GEMM` not `builtin`).
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
    fn the_preload_is_off_unless_turned_on() {
        for on in [
            Some("on"),
            Some(" ON "),
            Some("1"),
            Some("true"),
            Some("True"),
        ] {
            assert!(preload_enabled(on), "{on:?}");
        }
        for off in [
            None,
            Some(""),
            Some("off"),
            Some("0"),
            Some("false"),
            Some("yes"),
        ] {
            assert!(!preload_enabled(off), "{off:?}");
        }
    }
}
