//! Programmatic dependent launch (PDL): whether the kernels crate's launchers let each kernel
//! start while the one before it in the stream is still finishing.
//!
//! With the launch attribute `PROGRAMMATIC_STREAM_SERIALIZATION` (compute capability 9.0 and
//! later), a kernel's blocks may be scheduled before the previous kernel has completed; the
//! kernel itself waits for it (`griddepcontrol.wait`, `PDL_WAIT()` in the kernels' prelude)
//! before its first memory access of any kind, so the launch latency and block scheduling of
//! one kernel overlap the tail of the one before it, and nothing else does. Captured graphs keep
//! the programmatic edges (CUDA 12.3 and later).
//!
//! Only launches through the kernels crate's `ffi::launch` get the attribute, and every kernel
//! of that crate waits before touching memory (a unit test reads each kernel's PTX and fails on
//! a load, store, prefetch, branch or call before the wait), so either setting is correct; the
//! setting only changes speed. A runtime starts from `CUDAGRAPH_PDL`
//! (`auto`: on for compute capability 9.0 and later; `on`; `off`), and
//! [`Runtime::set_dependent_launch`](crate::Runtime::set_dependent_launch) changes it. A
//! captured graph keeps the launches it was recorded with.

/// The environment variable that sets the initial dependent-launch setting of every runtime.
pub const PDL_ENV: &str = "CUDAGRAPH_PDL";

/// The first compute capability (major) with programmatic dependent launch.
pub const PDL_MIN_MAJOR: i32 = 9;

/// Parses a value of `CUDAGRAPH_PDL` (case-insensitive, surrounding spaces ignored) for a device
/// of compute capability `major`: `auto` (or unset, or empty) is on from [`PDL_MIN_MAJOR`],
/// `on`/`1` asks for it (still off on older devices, which lack it), `off`/`0` turns it off.
pub fn parse(value: Option<&str>, major: i32) -> Result<bool, String> {
    let supported = major >= PDL_MIN_MAJOR;
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(supported);
    };
    match value.to_ascii_lowercase().as_str() {
        "auto" | "on" | "1" => Ok(supported),
        "off" | "0" => Ok(false),
        _ => Err(format!(
            "{PDL_ENV}={value:?} is not one of `auto`, `on`, `off`"
        )),
    }
}

/// The setting `CUDAGRAPH_PDL` gives a device of compute capability `major`; an unknown value
/// is reported (a `tracing` warning) and read as `auto`.
pub(crate) fn from_env(major: i32) -> bool {
    let value = std::env::var(PDL_ENV).ok();
    parse(value.as_deref(), major).unwrap_or_else(|message| {
        tracing::warn!("{message}; using `auto`");
        major >= PDL_MIN_MAJOR
    })
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_the_values_by_compute_capability() {
        assert_eq!(parse(None, 9), Ok(true));
        assert_eq!(parse(None, 8), Ok(false));
        assert_eq!(parse(Some(" AUTO "), 10), Ok(true));
        assert_eq!(parse(Some("on"), 9), Ok(true));
        assert_eq!(parse(Some("on"), 8), Ok(false), "no PDL before sm_90");
        assert_eq!(parse(Some("off"), 9), Ok(false));
        assert_eq!(parse(Some("0"), 9), Ok(false));
        let err = parse(Some("yes please"), 9).unwrap_err();
        assert!(err.contains("CUDAGRAPH_PDL"), "{err}");
    }
}
