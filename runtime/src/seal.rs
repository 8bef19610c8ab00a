//! [`Seal`]: the token every function of the backend seam takes, which safe code outside the
//! runtime can't make.

/// The proof that the caller of a [`BackendOps`](crate::backend::BackendOps) function (or of the pool-mode functions a
/// backend calls: [`pool_capture`](crate::pool_capture), [`FreezeScope::on_stream`](crate::FreezeScope::on_stream)) is the
/// runtime or a backend's implementation: its field is private and making one is `unsafe`, so
/// safe code outside can't call the runner's operations on tensors and devices (`narrow`,
/// `duplicate`, `stream`, ...), even through a generic `B: Backend` bound. An implementation
/// receives one per call and must not let it out of the call (see the contract of
/// [`BackendOps`](crate::backend::BackendOps)).
#[derive(Debug, Clone, Copy)]
pub struct Seal(());

impl Seal {
    /// A seal: for this crate's calls into a backend.
    pub(crate) const fn new() -> Self {
        Seal(())
    }

    /// A seal, for a backend implementation's own calls into the runtime's backend functions
    /// outside a call it was given one in (the native library's standalone `Runtime::capture`).
    ///
    /// # Safety
    ///
    /// The caller is a backend implementation upholding [`BackendOps`](crate::backend::BackendOps)' contract, and uses the
    /// seal only for calls that keep it: pool-mode captures of its own device, freeze scopes of
    /// its own stream. A seal handed to other code lets it call any backend's operations
    /// (`narrow` makes an owned alias of memory a replay rewrites).
    pub const unsafe fn new_unchecked() -> Self {
        Seal(())
    }
}
