//! What a runner did: replays per graph, padding waste, fallbacks, the keys seen, pool bytes,
//! capture times.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::keys::KeySpace;
use crate::pool_capture::CaptureTiming;

/// Figures for one graph: a captured size (at a key, when the plan has keys beyond the batch).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SizeStats {
    /// The batch size.
    pub size: usize,
    /// The key of the graph beyond the batch (`max_context ≤ 2048, lora = true`); empty
    /// without keys.
    pub key: String,
    /// Whether its graph is captured (always after a capture-at-init; on first use when lazy).
    pub captured: bool,
    /// Replays of this graph.
    pub replays: u64,
    /// Rows the callers asked for, summed over replays.
    pub rows: u64,
    /// Padding rows computed for nothing, summed over replays.
    pub padded_rows: u64,
    /// Nodes in the graph (all its segments together).
    pub nodes: usize,
    /// Graph segments (1 without islands; one more per island).
    pub segments: usize,
    /// Nodes per segment, in launch order.
    pub segment_nodes: Vec<usize>,
    /// Island runs in replays of this size (each replay runs every island of the size once;
    /// bare graph breaks are not counted).
    pub island_calls: u64,
    /// Calls of this size run eagerly through the replay path by the debug mode
    /// (`CUDAGRAPH_EAGER=1`, [`Runner::set_debug_eager`](crate::Runner::set_debug_eager)).
    pub debug_eager_calls: u64,
    /// Pool bytes this graph needs on its own.
    pub pool_need: usize,
    /// Where its capture time went.
    pub capture: CaptureTiming,
    /// The capture's error, when it failed and the plan runs failed sizes eagerly.
    pub capture_error: Option<String>,
}

/// Why a call ran eagerly instead of replaying a graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FallbackReason {
    /// The batch is larger than every captured size.
    TooLarge,
    /// An input's dtype or trailing dimensions differ from the captured ones.
    ShapeMismatch,
    /// A static argument differs from its captured value.
    StaticChanged,
    /// The size's capture failed and the plan asked to run such sizes eagerly
    /// ([`OnCaptureError::Eager`](crate::OnCaptureError)).
    CaptureFailed,
    /// A bucketed host value or input dimension is above its largest bucket.
    AboveBuckets,
    /// A variant's value is not one of the listed values.
    UnlistedVariant,
    /// Background capture ([`GraphPlan::with_background_capture`](crate::GraphPlan)): the
    /// size's graph is not captured yet.
    NotCapturedYet,
}

/// Number of [`FallbackReason`]s.
pub const FALLBACK_REASONS: usize = 7;

impl FallbackReason {
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FallbackReason::TooLarge => "batch larger than every captured size",
            FallbackReason::ShapeMismatch => {
                "input dtype or trailing shape differs from the captured one"
            }
            FallbackReason::StaticChanged => "a static argument differs from its captured value",
            FallbackReason::CaptureFailed => "the capture of this size failed",
            FallbackReason::AboveBuckets => {
                "a bucketed value or dimension is above its largest bucket"
            }
            FallbackReason::UnlistedVariant => "a variant's value is not listed",
            FallbackReason::NotCapturedYet => {
                "the size's graph is not captured yet (background capture)"
            }
        })
    }
}

/// Everything a runner counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunnerStats {
    /// The captured function.
    pub function: &'static str,
    /// Per captured size, ascending.
    pub sizes: Vec<SizeStats>,
    /// Eager fallbacks, by [`FallbackReason`] (indexed as its declaration order).
    pub fallbacks: [u64; FALLBACK_REASONS],
    /// Device bytes of the graph pool (intermediates and outputs of every graph, shared).
    pub pool_bytes: usize,
    /// Device bytes of the static input buffers.
    pub static_input_bytes: usize,
    /// Device bytes of the islands' input and output buffers (shared by every island and
    /// size of the runner; 0 without islands).
    pub island_buffer_bytes: usize,
    /// Wall time of the whole capture, freeze scope included.
    pub capture_wall: Duration,
    /// Reclamations the freeze scope made (2 with the default policy).
    pub reclaims: usize,
    /// Calls per batch size `n` (index `n`), up to the largest captured size.
    pub calls_by_batch: Vec<u64>,
    /// Calls with batches larger than every captured size, by batch size.
    pub calls_over: BTreeMap<usize, u64>,
    /// Calls by the value of each key component beyond the batch.
    pub keys: KeyHistograms,
    /// Graph-memory-node capture (cudarc, candle): the driver's graph-memory figures for the
    /// device, read after the runner's captures (`None` for cudagraph's own pool). The driver
    /// maps a graph's memory when it is uploaded or first launched; an init capture ends with
    /// a trim and then uploads the largest graph, so `reserved` includes that graph's memory
    /// once the upload (ordered on the stream) has run, beside what other graphs hold.
    pub graph_memory: Option<crate::GraphMemoryUsage>,
}

/// What kind of key component a histogram counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A bucketed host value: counts by the call's value (before rounding up).
    Value,
    /// A variant: counts by the index of the listed value.
    Variant,
    /// A bucketed input dimension: counts by the call's size of it.
    Dim,
}

/// Calls by the value of one key component.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyHistogram {
    /// The component's name (`max_context`, `lora`, `block_tables[1]`).
    pub name: &'static str,
    /// Its kind.
    pub kind: KeyKind,
    /// Calls by value (see [`KeyKind`]).
    pub counts: BTreeMap<u64, u64>,
}

impl KeyHistogram {
    /// The histogram as `(value, calls)` pairs, ascending (what
    /// [`advise_sizes`](crate::advise_sizes) takes for a bucketed value or dimension).
    pub fn pairs(&self) -> Vec<(usize, u64)> {
        self.counts
            .iter()
            .map(|(&v, &c)| (usize::try_from(v).unwrap_or(usize::MAX), c))
            .collect()
    }
}

/// Calls by the value of every key component beyond the batch (values, variants,
/// dimensions, in the key's order).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyHistograms {
    /// One per component.
    pub components: Vec<KeyHistogram>,
    /// Calls whose variant was not listed (their host values are not counted).
    pub unlisted_variants: u64,
}

impl KeyHistograms {
    /// Empty histograms for the components of `keys`.
    pub fn for_keys(keys: &KeySpace) -> Self {
        let values = keys.values().iter().map(|v| (v.name, KeyKind::Value));
        let variants = keys.variants().iter().map(|v| (v.name, KeyKind::Variant));
        let dims = keys.dims().iter().map(|d| (d.name, KeyKind::Dim));
        Self {
            components: values
                .chain(variants)
                .chain(dims)
                .map(|(name, kind)| KeyHistogram {
                    name,
                    kind,
                    counts: BTreeMap::new(),
                })
                .collect(),
            unlisted_variants: 0,
        }
    }

    /// Counts one call: `host` its bucketed values then variant indices (valid when
    /// `host_ok`), `dims` its inputs' dimensions.
    pub(crate) fn record(
        &mut self,
        keys: &KeySpace,
        host: &[u64],
        dims: &[&[usize]],
        host_ok: bool,
    ) {
        if self.components.is_empty() {
            return;
        }
        if host_ok {
            for (h, &v) in self.components.iter_mut().zip(host) {
                *h.counts.entry(v).or_insert(0) += 1;
            }
        } else {
            self.unlisted_variants += 1;
        }
        let first = keys.host_components();
        for (h, d) in self.components[first..].iter_mut().zip(keys.dims()) {
            *h.counts.entry(d.size_in(dims) as u64).or_insert(0) += 1;
        }
    }

    /// The histogram of the component named `name`.
    pub fn get(&self, name: &str) -> Option<&KeyHistogram> {
        self.components.iter().find(|h| h.name == name)
    }
}

impl RunnerStats {
    /// Total eager fallbacks.
    pub fn fallback_count(&self) -> u64 {
        self.fallbacks.iter().sum()
    }

    /// Fallbacks for one reason.
    pub fn fallbacks_for(&self, reason: FallbackReason) -> u64 {
        self.fallbacks[reason.index()]
    }

    /// Total graph replays.
    pub fn replay_count(&self) -> u64 {
        self.sizes.iter().map(|s| s.replays).sum()
    }

    /// Padded rows over real rows, across all replays (0 when nothing replayed).
    pub fn padding_waste(&self) -> f64 {
        let rows: u64 = self.sizes.iter().map(|s| s.rows).sum();
        let padded: u64 = self.sizes.iter().map(|s| s.padded_rows).sum();
        if rows == 0 {
            0.0
        } else {
            padded as f64 / rows as f64
        }
    }

    /// The recorded batch sizes as `(n, calls)` pairs, ascending.
    pub fn batch_histogram(&self) -> Vec<(usize, u64)> {
        let mut h: Vec<(usize, u64)> = self
            .calls_by_batch
            .iter()
            .enumerate()
            .filter(|&(_, &c)| c > 0)
            .map(|(n, &c)| (n, c))
            .collect();
        h.extend(self.calls_over.iter().map(|(&n, &c)| (n, c)));
        h
    }

    /// The largest pool need of a single graph.
    pub fn largest_graph_need(&self) -> usize {
        self.sizes.iter().map(|s| s.pool_need).max().unwrap_or(0)
    }

    /// Sum of the parts of every capture.
    pub fn capture_parts(&self) -> CaptureTiming {
        self.sizes
            .iter()
            .fold(CaptureTiming::default(), |acc, s| CaptureTiming {
                warmup: acc.warmup + s.capture.warmup,
                record: acc.record + s.capture.record,
                instantiate: acc.instantiate + s.capture.instantiate,
                upload: acc.upload + s.capture.upload,
            })
    }
}

impl fmt::Display for RunnerStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = self.capture_parts();
        write!(
            f,
            "`{}`: {} graphs in {:.3} s (warm-up {:.3} s, record {:.3} s, instantiate {:.3} s, upload {:.3} s), {} {:.1} MiB{}, static inputs {:.1} KiB, {} replays, {} fallbacks, padding waste {:.1}%",
            self.function,
            self.sizes.iter().filter(|s| s.captured).count(),
            self.capture_wall.as_secs_f64(),
            parts.warmup.as_secs_f64(),
            parts.record.as_secs_f64(),
            parts.instantiate.as_secs_f64(),
            parts.upload.as_secs_f64(),
            if self.graph_memory.is_some() {
                "largest graph's allocation nodes"
            } else {
                "pool (physical)"
            },
            self.pool_bytes as f64 / (1 << 20) as f64,
            match &self.graph_memory {
                // Node sums are virtual (what the graphs' allocations add up to); what the
                // driver reserves is physical, for every graph of the device.
                Some(usage) => format!(
                    " (virtual: a sum of allocations; the driver maps them at first launch; the device's graph memory reserved when last read: {:.1} MiB physical, every graph on it)",
                    usage.reserved as f64 / (1 << 20) as f64
                ),
                None => String::new(),
            },
            self.static_input_bytes as f64 / 1024.0,
            self.replay_count(),
            self.fallback_count(),
            self.padding_waste() * 100.0,
        )?;
        let islands: usize = self
            .sizes
            .iter()
            .map(|s| s.segments.saturating_sub(1))
            .max()
            .unwrap_or(0);
        if islands > 0 {
            write!(
                f,
                ", up to {islands} island(s) per size ({} segments), island buffers {:.1} KiB",
                islands + 1,
                self.island_buffer_bytes as f64 / 1024.0
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_labels_virtual_and_physical_bytes() {
        let mut stats = RunnerStats {
            function: "f",
            pool_bytes: 3 << 20,
            ..RunnerStats::default()
        };
        let pool = stats.to_string();
        assert!(pool.contains("pool (physical) 3.0 MiB"), "{pool}");
        stats.graph_memory = Some(crate::GraphMemoryUsage {
            reserved: 5 << 20,
            ..Default::default()
        });
        let nodes = stats.to_string();
        assert!(
            nodes.contains("allocation nodes 3.0 MiB (virtual"),
            "{nodes}"
        );
        assert!(nodes.contains("5.0 MiB physical"), "{nodes}");
    }

    #[test]
    fn padding_waste_is_padded_over_real_rows() {
        let stats = RunnerStats {
            sizes: vec![
                SizeStats {
                    size: 8,
                    replays: 2,
                    rows: 10,
                    padded_rows: 6,
                    ..Default::default()
                },
                SizeStats {
                    size: 16,
                    replays: 1,
                    rows: 10,
                    padded_rows: 6,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert!((stats.padding_waste() - 0.6).abs() < 1e-12);
        assert_eq!(stats.replay_count(), 3);
        assert_eq!(RunnerStats::default().padding_waste(), 0.0);
    }
}
