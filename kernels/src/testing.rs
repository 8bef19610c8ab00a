//! Helpers for GPU tests: skip with a printed reason without a GPU, fail when one is required.

use crate::context::Runtime;

/// The environment variable that turns a missing GPU into a test failure.
pub const REQUIRE_GPU_ENV: &str = "CUDAGRAPH_REQUIRE_GPU";

/// A runtime on device 0, or `None` (after printing why) when no CUDA driver is installed.
///
/// # Panics
/// When `CUDAGRAPH_REQUIRE_GPU=1` and there is no driver, and whenever a driver loads but the
/// runtime can't be created (no device, a broken driver, out of memory): those are test
/// failures, on purpose, never a silent skip.
pub fn gpu_or_skip(test: &str) -> Option<Runtime> {
    match Runtime::new(0) {
        Ok(rt) => Some(rt),
        Err(e) => {
            assert!(
                skips(&e, required()),
                "{test}: a CUDA driver is present but the runtime failed: {e}"
            );
            println!("skipped {test}: no GPU ({e})");
            None
        }
    }
}

fn required() -> bool {
    std::env::var(REQUIRE_GPU_ENV).is_ok_and(|v| v == "1")
}

/// Whether a failure to create the runtime skips a test: only a missing driver does, and only
/// when a GPU is not required.
fn skips(error: &crate::Error, required: bool) -> bool {
    assert!(
        !required,
        "{REQUIRE_GPU_ENV}=1 but the runtime could not be created: {error}"
    );
    matches!(error, crate::Error::NoDriver(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn only_a_missing_driver_skips() {
        assert!(skips(&Error::NoDriver("no libcuda".into()), false));
        assert!(!skips(
            &Error::NoDevice {
                ordinal: 0,
                count: 0
            },
            false
        ));
        let broken = Error::Driver {
            call: "cuCtxCreate",
            source: cudarc::driver::DriverError(cudarc::driver::sys::CUresult::CUDA_ERROR_UNKNOWN),
        };
        assert!(!skips(&broken, false));
        let required = std::panic::catch_unwind(|| skips(&Error::NoDriver(String::new()), true));
        assert!(required.is_err(), "a required GPU never skips");
    }
}
