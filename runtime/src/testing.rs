//! Helpers for GPU tests: skip with a printed reason without a GPU, fail when one is required.

use crate::context::Runtime;

/// The environment variable that turns a missing GPU into a test failure.
pub const REQUIRE_GPU_ENV: &str = "CUDAGRAPH_REQUIRE_GPU";

/// A runtime on device 0, or `None` (after printing why) when no GPU is usable.
///
/// # Panics
/// When `CUDAGRAPH_REQUIRE_GPU=1` and no GPU is usable: that is a test failure, on purpose.
pub fn gpu_or_skip(test: &str) -> Option<Runtime> {
    match Runtime::new(0) {
        Ok(rt) => Some(rt),
        Err(e) => {
            let required = std::env::var(REQUIRE_GPU_ENV).is_ok_and(|v| v == "1");
            assert!(!required, "{test}: {REQUIRE_GPU_ENV}=1 but no GPU: {e}");
            println!("skipped {test}: no GPU ({e})");
            None
        }
    }
}
