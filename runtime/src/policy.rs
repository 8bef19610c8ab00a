//! The policies a capture follows, each chosen per runtime or per plan and read from the
//! environment by default: when memory is reclaimed ([`ReclaimPolicy`]), whether a capture
//! warms up first ([`Warmup`]), and what a failed size does ([`OnCaptureError`]). Plain values,
//! no CUDA: the modules that act on them (`freeze`, `capture`, `runner`) sit above this one.

/// The environment variable that selects the [`ReclaimPolicy`].
pub const RECLAIM_ENV: &str = "CUDAGRAPH_CAPTURE_RECLAIM";

/// When a batch of captures gives memory back to the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReclaimPolicy {
    /// Once before and once after the batch (the default).
    Once,
    /// Also after every graph (debugging; slower).
    Each,
}

impl ReclaimPolicy {
    /// Reads [`RECLAIM_ENV`]: `each` selects [`ReclaimPolicy::Each`]; anything else, or unset,
    /// [`ReclaimPolicy::Once`].
    pub fn from_env() -> Self {
        Self::parse(std::env::var(RECLAIM_ENV).ok().as_deref())
    }

    /// Parses the variable's value (see [`from_env`](Self::from_env)).
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            Some(v) if v.trim().eq_ignore_ascii_case("each") => ReclaimPolicy::Each,
            _ => ReclaimPolicy::Once,
        }
    }
}

/// Whether a capture starts with an eager warm-up run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warmup {
    /// Always warm up (lazy initialisation, and measurement of the pool memory needed).
    Always,
    /// Capture straight into the pool's largest chunk; warm up and retry only if the capture
    /// needs more memory than that chunk has, or if the pool has no chunk yet.
    IfNeeded,
}

/// The environment variable that forces a warm-up before every capture (`each`).
pub const WARMUP_ENV: &str = "CUDAGRAPH_CAPTURE_WARMUP";

impl Warmup {
    /// [`Warmup::Always`] when `CUDAGRAPH_CAPTURE_WARMUP=each`, else [`Warmup::IfNeeded`].
    pub fn from_env() -> Self {
        Self::parse(std::env::var(WARMUP_ENV).ok().as_deref())
    }

    /// Parses the variable's value (see [`from_env`](Self::from_env)).
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            Some(v) if v.trim().eq_ignore_ascii_case("each") => Warmup::Always,
            _ => Warmup::IfNeeded,
        }
    }
}

/// What a runner does when capturing a size fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnCaptureError {
    /// Fail the whole construction with the capture's error; nothing is kept (the default).
    #[default]
    Abort,
    /// Keep the other sizes; calls that would use a failed size run the eager function
    /// (counted as [`FallbackReason::CaptureFailed`](crate::FallbackReason::CaptureFailed)).
    Eager,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_parsing() {
        assert_eq!(ReclaimPolicy::parse(Some("each")), ReclaimPolicy::Each);
        assert_eq!(ReclaimPolicy::parse(Some(" EACH ")), ReclaimPolicy::Each);
        assert_eq!(ReclaimPolicy::parse(Some("once")), ReclaimPolicy::Once);
        assert_eq!(ReclaimPolicy::parse(Some("")), ReclaimPolicy::Once);
        assert_eq!(ReclaimPolicy::parse(None), ReclaimPolicy::Once);
    }

    #[test]
    fn warmup_parsing() {
        assert_eq!(Warmup::parse(Some("each")), Warmup::Always);
        assert_eq!(Warmup::parse(Some("first")), Warmup::IfNeeded);
        assert_eq!(Warmup::parse(None), Warmup::IfNeeded);
    }
}
