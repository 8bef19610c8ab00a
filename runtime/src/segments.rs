//! [`Segments`]: how a capture under way is cut into graph segments around an eager island
//! ([`Islands`](crate::Islands)). Each capture mode implements it for the size it records
//! (pool mode in [`pool_capture`](crate::pool_capture), graph-memory-node mode in
//! [`backend::nodes`](crate::backend::nodes)) and hands it to the forward's body; a warm-up,
//! which records nothing, hands none.

use crate::error::Result;
use crate::ffi::DeviceRange;
use crate::seal::Seal;

/// The capture of one size, cut at islands.
///
/// Every function takes a [`Seal`]: only the runtime's islands cut a capture.
pub trait Segments {
    /// Ends the segment being recorded: its graph is checked, instantiated, uploaded and
    /// launched (so the island that follows sees what it computed), and the device leaves
    /// capture mode (allocations from the driver, host work allowed) until
    /// [`resume`](Self::resume).
    fn cut(&self, seal: Seal) -> Result<()>;

    /// Begins recording the next segment (allocations from the capture's memory again).
    fn resume(&self, seal: Seal) -> Result<()>;

    /// Whether `range` lies in memory this recording allocated (a segment's tensor, rewritten
    /// by every replay): an island's input there is copied into a runner-owned buffer before
    /// each run; any other input (a weight, a model's buffer, a static input) is handed to the
    /// island as it is, so that what the island writes to it is real, as in a direct call.
    fn owns(&self, seal: Seal, range: DeviceRange) -> bool;

    /// Whether the islands run here are kept for replays (a recording), or dropped right after
    /// they run (a warm-up, which must free what an island holds as soon as the capture would,
    /// or it would measure more pool memory than the capture uses).
    fn keeps_islands(&self, _seal: Seal) -> bool {
        true
    }
}
