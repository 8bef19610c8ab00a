//! The GEMM algorithm table: which cuBLASLt algorithm a GEMM uses, chosen once per key and kept
//! on disk next to the kernel CUBINs, so that a second process asks cuBLASLt's heuristic
//! nothing.
//!
//! A key ([`AlgoKey`]) is a GEMM's geometry in cuBLAS's column-major terms (`C (m x n) =
//! op(A) B`) with `n`, the dimension that varies from call to call (a linear layer's batch
//! rows), replaced by its bucket ([`n_bucket`]): one heuristic query per bucket serves every `n`
//! in it. The library identity (GPU name, compute capability, cuBLASLt version) is the file's:
//! one file per identity ([`file_name`]), its header repeating the identity, so a file read by
//! another GPU or library version is recognised as foreign and ignored.
//!
//! The file (text, one algorithm a line; `cublasLtMatmulAlgo_t` is 64 opaque bytes that NVIDIA
//! documents as trivially serializable for one library version):
//!
//! ```text
//! cudagraph-gemm-algos 1
//! device NVIDIA H200
//! compute 9.0
//! cublaslt 130100
//! bf16 TN m=2048 k=1024 ld=1024,1024,2048 align=256,256,256 n<=256 ws=0 algo=<128 hex digits>
//! bf16 TN m=2048 k=1024 ld=1024,1024,2048 align=256,256,256 n=200 ws=0 algo=...
//! ```
//!
//! `n<=B` is a bucket's entry; `n=N` an exact shape for which its bucket's algorithm was not
//! valid. Writes are atomic (a temporary file renamed over the old one) and merge what another
//! process wrote meanwhile; a corrupt or foreign file is ignored with a `tracing` warning (and
//! replaced at the next write), never a panic.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cudagraph_runtime::nvrtc;

/// The format's first line; a file starting otherwise is not read.
const MAGIC: &str = "cudagraph-gemm-algos";
/// The format's version (the number after [`MAGIC`]).
pub(crate) const FORMAT_VERSION: u32 = 1;

/// Rows of `n` up to this share the first bucket.
pub(crate) const FIRST_BUCKET: u32 = 16;

/// Above this, buckets are quarter octaves instead of powers of two.
pub(crate) const FINE_ABOVE: u32 = 64;

/// The bucket of `n` (cuBLAS's `n`: a linear layer's batch rows), named by its upper bound:
/// `1..=16` is one bucket, then powers of two up to 64 (`17..=32`, `33..=64`), then four
/// buckets per octave (`65..=80`, `81..=96`, `97..=112`, `113..=128`, `129..=160`, ...,
/// `449..=512`, ...: bounds the multiples of an eighth of the next power of two).
///
/// One heuristic query at the upper bound serves every `n` of the bucket (after a validity
/// check at the exact shape). Chosen from a measurement on the H200 (`bench/NOTES.md`, lever
/// 7) of the decoder's five GEMM shapes with power-of-two buckets: up to 64 rows the GEMMs are
/// memory-bound and the algorithm chosen at a power of two ran every measured smaller `n` of
/// its octave within 5% of the exact shape's own choice; above 64 the tiles matter, and it ran
/// up to 1.57x slower at half its bound (gate+up at 256 with the algorithm of 512) and 1.39x at
/// three quarters (gate+up at 192 with that of 256), hence the quarter octaves there.
pub fn n_bucket(n: u32) -> u32 {
    if n <= FIRST_BUCKET {
        return FIRST_BUCKET;
    }
    // n <= i32::MAX (cuBLAS takes an int): every bound fits in a u32 (at most 2^31).
    let n = u64::from(n);
    let octave = n.next_power_of_two();
    let bound = if n <= u64::from(FINE_ABOVE) {
        octave
    } else {
        let step = octave / 8;
        n.div_ceil(step) * step
    };
    u32::try_from(bound).unwrap_or(1 << 31)
}

/// The element type of a GEMM's A, B and C (f32 accumulation for all).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum GemmDtype {
    /// bf16 inputs and output.
    Bf16,
}

impl GemmDtype {
    fn name(self) -> &'static str {
        match self {
            GemmDtype::Bf16 => "bf16",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        (s == "bf16").then_some(GemmDtype::Bf16)
    }
}

/// Which `n` an algorithm was chosen for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum NChoice {
    /// Every `n` of the bucket with this upper bound (queried at the bound).
    Bucket(u32),
    /// This exact `n` (its bucket's algorithm was not valid for it).
    Exact(u32),
}

/// What an algorithm is chosen for: a GEMM's geometry with `n` bucketed, in cuBLAS's
/// column-major terms. For a linear layer `y [rows, out] = x [rows, in] @ w [out, in]^T`
/// (cudagraph's `ops::linear`) that is `m = out`, `k = in`, `n = rows` (the batch),
/// `lda = ldb = k`, `ldc = m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct AlgoKey {
    pub(crate) dtype: GemmDtype,
    /// `op(A)` is `A^T`.
    pub(crate) trans_a: bool,
    /// `op(B)` is `B^T`.
    pub(crate) trans_b: bool,
    /// Rows of `C`.
    pub(crate) m: u32,
    /// The shared dimension.
    pub(crate) k: u32,
    /// Leading dimensions of A, B, C.
    pub(crate) ld: [u32; 3],
    /// Alignment in bytes of A's, B's and C's addresses (powers of two, at most 256): the
    /// heuristic only returns algorithms that work at these alignments.
    pub(crate) align: [u32; 3],
    /// The bucket or exact `n`.
    pub(crate) n: NChoice,
}

/// The largest alignment a key distinguishes (cuBLASLt's default requirement).
pub(crate) const MAX_ALIGN: u32 = 256;

/// The alignment class of a device address: the largest power of two dividing it, at most
/// [`MAX_ALIGN`].
pub(crate) fn alignment(addr: u64) -> u32 {
    if addr == 0 {
        return MAX_ALIGN;
    }
    (1u64 << addr.trailing_zeros().min(MAX_ALIGN.trailing_zeros())) as u32
}

impl fmt::Display for AlgoKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = |b: bool| if b { 'T' } else { 'N' };
        write!(
            f,
            "{} {}{} m={} k={} ld={},{},{} align={},{},{} ",
            self.dtype.name(),
            t(self.trans_a),
            t(self.trans_b),
            self.m,
            self.k,
            self.ld[0],
            self.ld[1],
            self.ld[2],
            self.align[0],
            self.align[1],
            self.align[2],
        )?;
        match self.n {
            NChoice::Bucket(b) => write!(f, "n<={b}"),
            NChoice::Exact(n) => write!(f, "n={n}"),
        }
    }
}

/// A chosen algorithm: `cublasLtMatmulAlgo_t`'s 64 bytes and the workspace the heuristic said it
/// needs at the shape it was chosen for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StoredAlgo {
    pub(crate) algo: [u64; 8],
    pub(crate) workspace: usize,
}

/// The GPU and library an algorithm table belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LibraryIdentity {
    /// The device's name (`cuDeviceGetName`).
    pub(crate) device: String,
    /// Compute capability (major, minor).
    pub(crate) compute: (i32, i32),
    /// `cublasLtGetVersion()`.
    pub(crate) cublaslt: usize,
}

/// The table's file name in the cache folder for `id`: the identity hashed, so GPUs and library
/// versions sharing a folder keep one file each.
pub(crate) fn file_name(id: &LibraryIdentity) -> String {
    let key = nvrtc::fnv1a(&[
        MAGIC.as_bytes(),
        &FORMAT_VERSION.to_le_bytes(),
        id.device.as_bytes(),
        &id.compute.0.to_le_bytes(),
        &id.compute.1.to_le_bytes(),
        &id.cublaslt.to_le_bytes(),
    ]);
    format!("gemm-algos-{key:016x}.txt")
}

/// The table's path: [`file_name`] in the kernel cache folder (`CUDAGRAPH_CACHE_DIR`, ...), or
/// `None` when that cache is off.
pub(crate) fn file_path(id: &LibraryIdentity) -> Option<PathBuf> {
    nvrtc::cache_dir().map(|dir| dir.join(file_name(id)))
}

/// Renders a table for `id`, entries sorted (so equal tables give equal files).
pub(crate) fn render(id: &LibraryIdentity, entries: &HashMap<AlgoKey, StoredAlgo>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{MAGIC} {FORMAT_VERSION}");
    let _ = writeln!(out, "device {}", id.device.replace(['\n', '\r'], " "));
    let _ = writeln!(out, "compute {}.{}", id.compute.0, id.compute.1);
    let _ = writeln!(out, "cublaslt {}", id.cublaslt);
    let mut lines: Vec<String> = entries
        .iter()
        .map(|(key, stored)| {
            let mut line = format!("{key} ws={} algo=", stored.workspace);
            for word in stored.algo {
                let _ = write!(line, "{word:016x}");
            }
            line
        })
        .collect();
    lines.sort();
    for line in lines {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Why a table file was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TableError {
    /// Not a table of this format version (or not a table at all).
    Format(String),
    /// A table of another GPU or library version.
    Foreign(String),
    /// A line that does not parse.
    Corrupt {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableError::Format(why) => write!(f, "not a GEMM algorithm table: {why}"),
            TableError::Foreign(why) => write!(f, "a table of another GPU or library: {why}"),
            TableError::Corrupt { line, reason } => write!(f, "line {line}: {reason}"),
        }
    }
}

/// Parses a table, which must belong to `id`. Any bad line rejects the whole file (a file
/// half-written by something else is not trusted).
pub(crate) fn parse(
    text: &str,
    id: &LibraryIdentity,
) -> Result<HashMap<AlgoKey, StoredAlgo>, TableError> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    match header.split_once(' ') {
        Some((MAGIC, v)) if v == FORMAT_VERSION.to_string() => {}
        Some((MAGIC, v)) => {
            return Err(TableError::Format(format!(
                "format version {v:?}, this build reads {FORMAT_VERSION}"
            )));
        }
        _ => return Err(TableError::Format(format!("first line {header:?}"))),
    }
    let expect = [
        ("device", id.device.replace(['\n', '\r'], " ")),
        ("compute", format!("{}.{}", id.compute.0, id.compute.1)),
        ("cublaslt", id.cublaslt.to_string()),
    ];
    for (i, (field, ours)) in expect.iter().enumerate() {
        let line = lines.next().unwrap_or("");
        let Some((name, theirs)) = line.split_once(' ') else {
            return Err(TableError::Corrupt {
                line: i + 2,
                reason: format!("expected `{field} ...`, got {line:?}"),
            });
        };
        if name != *field {
            return Err(TableError::Corrupt {
                line: i + 2,
                reason: format!("expected `{field} ...`, got {line:?}"),
            });
        }
        if theirs != ours {
            return Err(TableError::Foreign(format!(
                "{field} {theirs:?}, this process has {ours:?}"
            )));
        }
    }
    let mut entries = HashMap::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (key, stored) = parse_entry(line).map_err(|reason| TableError::Corrupt {
            line: i + 5,
            reason,
        })?;
        entries.insert(key, stored);
    }
    Ok(entries)
}

fn parse_entry(line: &str) -> Result<(AlgoKey, StoredAlgo), String> {
    let fields: Vec<&str> = line.split(' ').collect();
    let [dtype, trans, m, k, ld, align, n, ws, algo] = fields[..] else {
        return Err(format!("{} fields, expected 9", fields.len()));
    };
    let dtype = GemmDtype::parse(dtype).ok_or_else(|| format!("unknown dtype {dtype:?}"))?;
    let (trans_a, trans_b) = match trans.as_bytes() {
        [a, b] => (transpose(*a)?, transpose(*b)?),
        _ => return Err(format!("transposes {trans:?}")),
    };
    let num = |field: &str, name: &str| -> Result<u32, String> {
        field
            .strip_prefix(name)
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|&v| v > 0)
            .ok_or_else(|| format!("expected {name}<positive number>, got {field:?}"))
    };
    let triple = |field: &str, name: &str| -> Result<[u32; 3], String> {
        let bad = || format!("expected {name}<a>,<b>,<c>, got {field:?}");
        let values: Vec<u32> = field
            .strip_prefix(name)
            .ok_or_else(bad)?
            .split(',')
            .map(|v| v.parse::<u32>().ok().filter(|&v| v > 0))
            .collect::<Option<_>>()
            .ok_or_else(bad)?;
        values.try_into().map_err(|_| bad())
    };
    let align = triple(align, "align=")?;
    if align.iter().any(|&a| !a.is_power_of_two() || a > MAX_ALIGN) {
        return Err(format!("alignments {align:?}"));
    }
    // A bound the current bucket function never produces (a table of another build's buckets)
    // is kept: its key is simply never looked up.
    let n = if let Some(b) = n.strip_prefix("n<=") {
        NChoice::Bucket(num(b, "")?)
    } else {
        NChoice::Exact(num(n, "n=")?)
    };
    let key = AlgoKey {
        dtype,
        trans_a,
        trans_b,
        m: num(m, "m=")?,
        k: num(k, "k=")?,
        ld: triple(ld, "ld=")?,
        align,
        n,
    };
    let workspace = ws
        .strip_prefix("ws=")
        .and_then(|v| v.parse::<usize>().ok())
        .ok_or_else(|| format!("expected ws=<bytes>, got {ws:?}"))?;
    let hex = algo
        .strip_prefix("algo=")
        .filter(|h| h.len() == 128 && h.is_ascii())
        .ok_or_else(|| "expected algo=<128 hex digits>".to_string())?;
    let mut words = [0u64; 8];
    for (i, word) in words.iter_mut().enumerate() {
        *word = u64::from_str_radix(&hex[i * 16..(i + 1) * 16], 16)
            .map_err(|e| format!("algo word {i}: {e}"))?;
    }
    Ok((
        key,
        StoredAlgo {
            algo: words,
            workspace,
        },
    ))
}

fn transpose(c: u8) -> Result<bool, String> {
    match c {
        b'T' => Ok(true),
        b'N' => Ok(false),
        other => Err(format!("transpose {:?}", other as char)),
    }
}

/// Reads the table at `path` for `id`: empty when there is none; a file that can't be used is
/// reported (a `tracing` warning) and treated as empty.
pub(crate) fn load(path: &Path, id: &LibraryIdentity) -> HashMap<AlgoKey, StoredAlgo> {
    let text = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return HashMap::new(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not read the GEMM algorithm table; ignoring it");
            return HashMap::new();
        }
    };
    let Ok(text) = String::from_utf8(text) else {
        tracing::warn!(path = %path.display(), "the GEMM algorithm table is not text; ignoring it");
        return HashMap::new();
    };
    match parse(&text, id) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring the GEMM algorithm table");
            HashMap::new()
        }
    }
}

/// Writes `entries`, merged over what the file holds now for `id` (another process's
/// algorithms are kept; ours win on equal keys), atomically: a temporary file of this process
/// and call, renamed over the old one. A failure is reported (a warning) and costs only a later
/// query.
pub(crate) fn store(path: &Path, id: &LibraryIdentity, entries: &HashMap<AlgoKey, StoredAlgo>) {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let mut merged = match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, id).unwrap_or_default(),
        Err(_) => HashMap::new(),
    };
    merged.extend(entries.iter().map(|(k, v)| (*k, *v)));
    let text = render(id, &merged);
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            let tmp = path.with_extension(format!(
                "tmp{}-{}",
                std::process::id(),
                WRITES.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&tmp, text.as_bytes())
                .and_then(|()| std::fs::rename(&tmp, path))
                .inspect_err(|_| {
                    let _ = std::fs::remove_file(&tmp);
                })
        });
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "could not write the GEMM algorithm table");
    }
}

/// What a runtime's cuBLASLt GEMMs spent on choosing algorithms
/// ([`Runtime::gemm_algo_stats`](crate::Runtime::gemm_algo_stats)).
///
/// A fresh process with nothing on disk makes one heuristic query per GEMM shape and `n`
/// bucket (see [`gemm`](crate::gemm)); a second process with the same cache folder makes none.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GemmAlgoStats {
    /// `cublasLtMatmulAlgoGetHeuristic` calls this runtime made.
    pub heuristic_queries: usize,
    /// Host time those calls took.
    pub heuristic_time: Duration,
    /// Algorithms taken from the on-disk table instead of a query (each counted at its first
    /// use by this runtime).
    pub from_disk: usize,
    /// Shapes for which their bucket's algorithm was not valid (`cublasLtMatmulAlgoCheck`), so
    /// that they were looked up or queried for themselves (their queries count in
    /// `heuristic_queries` too).
    pub exact_shapes: usize,
    /// Distinct GEMM geometries (exact shape, leading dimensions, alignments) this runtime
    /// planned: layouts created and the algorithm checked, once each.
    pub plans: usize,
    /// Host time spent planning them, queries included.
    pub plan_time: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> LibraryIdentity {
        LibraryIdentity {
            device: "NVIDIA H200".into(),
            compute: (9, 0),
            cublaslt: 130_100,
        }
    }

    fn key(m: u32, n: NChoice) -> AlgoKey {
        AlgoKey {
            dtype: GemmDtype::Bf16,
            trans_a: true,
            trans_b: false,
            m,
            k: 1024,
            ld: [1024, 1024, m],
            align: [256, 256, 256],
            n,
        }
    }

    fn table() -> HashMap<AlgoKey, StoredAlgo> {
        let mut t = HashMap::new();
        t.insert(
            key(2048, NChoice::Bucket(256)),
            StoredAlgo {
                algo: [1, 2, 3, u64::MAX, 0, 0, 7, 0xdead_beef],
                workspace: 0,
            },
        );
        t.insert(
            key(151_936, NChoice::Exact(200)),
            StoredAlgo {
                algo: [9; 8],
                workspace: 4 << 20,
            },
        );
        t
    }

    #[test]
    fn buckets_one_up_to_16_then_powers_of_two_then_quarter_octaves() {
        for n in 1..=16 {
            assert_eq!(n_bucket(n), 16, "n = {n}");
        }
        assert_eq!(n_bucket(0), 16);
        for (n, bound) in [
            (17, 32),
            (24, 32),
            (32, 32),
            (33, 64),
            (64, 64),
            (65, 80),
            (80, 80),
            (81, 96),
            (96, 96),
            (100, 112),
            (113, 128),
            (128, 128),
            (129, 160),
            (161, 192),
            (192, 192),
            (200, 224),
            (256, 256),
            (257, 320),
            (384, 384),
            (449, 512),
            (512, 512),
            (513, 640),
            (1000, 1024),
        ] {
            assert_eq!(n_bucket(n), bound, "n = {n}");
        }
        assert_eq!(n_bucket(i32::MAX as u32), 1 << 31);
        assert_eq!(n_bucket((1 << 30) + 1), 5 << 28);
        // Every bound is its own bucket; every n lies in its bucket; buckets are nested ranges
        // (monotone), at most a quarter octave wide above 64.
        for n in 1..=4096u32 {
            let b = n_bucket(n);
            assert!(n <= b && n_bucket(b) == b, "n = {n}");
            assert!(n_bucket(n + 1) >= b, "monotone at {n}");
            if n > 64 {
                assert!(
                    u64::from(b) * 4 <= u64::from(n) * 5 + 64,
                    "n = {n}: bound {b}"
                );
            }
        }
        // The decoder's 35 sizes (1, 2, 4, 8..=256 step 8) fall into 11 buckets; 1..=512 into 15.
        let sizes: Vec<u32> = [1, 2, 4].into_iter().chain((8..=256).step_by(8)).collect();
        let mut buckets: Vec<u32> = sizes.iter().map(|&n| n_bucket(n)).collect();
        buckets.dedup();
        assert_eq!(buckets, [16, 32, 64, 80, 96, 112, 128, 160, 192, 224, 256]);
        let mut buckets: Vec<u32> = (1..=512).map(n_bucket).collect();
        buckets.dedup();
        assert_eq!(buckets.len(), 15);
    }

    #[test]
    fn alignment_classes() {
        assert_eq!(alignment(0), 256);
        assert_eq!(alignment(0x7f00_0000_0000), 256);
        assert_eq!(alignment(0x7f00_0000_0100), 256);
        assert_eq!(alignment(0x7f00_0000_0080), 128);
        assert_eq!(alignment(0x7f00_0000_0002), 2);
        assert_eq!(alignment(0x7f00_0000_0001), 1);
    }

    #[test]
    fn keys_differ_in_every_field() {
        use std::collections::HashSet;
        let base = key(2048, NChoice::Bucket(64));
        let variants = [
            base,
            AlgoKey {
                trans_a: false,
                ..base
            },
            AlgoKey {
                trans_b: true,
                ..base
            },
            AlgoKey { m: 1024, ..base },
            AlgoKey { k: 3072, ..base },
            AlgoKey {
                ld: [1024, 1024, 4096],
                ..base
            },
            AlgoKey {
                align: [256, 2, 256],
                ..base
            },
            AlgoKey {
                n: NChoice::Bucket(128),
                ..base
            },
            AlgoKey {
                n: NChoice::Exact(64),
                ..base
            },
        ];
        let set: HashSet<AlgoKey> = variants.iter().copied().collect();
        assert_eq!(set.len(), variants.len());
        let texts: HashSet<String> = variants.iter().map(|k| k.to_string()).collect();
        assert_eq!(texts.len(), variants.len(), "the file tells them apart too");
        assert_eq!(
            base.to_string(),
            "bf16 TN m=2048 k=1024 ld=1024,1024,2048 align=256,256,256 n<=64"
        );
    }

    #[test]
    fn file_names_follow_the_identity() {
        let a = id();
        let name = file_name(&a);
        assert!(
            name.starts_with("gemm-algos-") && name.ends_with(".txt"),
            "{name}"
        );
        assert_eq!(name, file_name(&a.clone()), "stable");
        for other in [
            LibraryIdentity {
                device: "NVIDIA H100 80GB HBM3".into(),
                ..a.clone()
            },
            LibraryIdentity {
                compute: (10, 0),
                ..a.clone()
            },
            LibraryIdentity {
                cublaslt: 130_000,
                ..a.clone()
            },
        ] {
            assert_ne!(file_name(&other), name, "{other:?}");
        }
    }

    #[test]
    fn tables_round_trip() {
        let t = table();
        let text = render(&id(), &t);
        assert!(text.starts_with("cudagraph-gemm-algos 1\ndevice NVIDIA H200\n"));
        assert_eq!(parse(&text, &id()), Ok(t.clone()));
        assert_eq!(render(&id(), &parse(&text, &id()).unwrap()), text, "stable");
        let empty = render(&id(), &HashMap::new());
        assert_eq!(parse(&empty, &id()), Ok(HashMap::new()));
        // A bound today's buckets never produce (another build's) still reads: never looked up.
        let mut other = HashMap::new();
        other.insert(
            key(2048, NChoice::Bucket(200)),
            StoredAlgo {
                algo: [3; 8],
                workspace: 0,
            },
        );
        assert_eq!(parse(&render(&id(), &other), &id()), Ok(other));
    }

    #[test]
    fn corrupt_tables_are_rejected_not_panicked_on() {
        let text = render(&id(), &table());
        let last = text.lines().last().unwrap().to_string();
        let cases = [
            String::new(),
            "garbage".into(),
            "\u{0}\u{1}binary".into(),
            text[..text.len() / 2].into(), // cut inside an algorithm line
            text.replace("algo=", "algo=z"),
            text.replace(" ws=0", " ws=-1"),
            text.replace("m=2048", "m=0"),
            text.replace("n<=256", "n<=0"),
            text.replace("n<=256", "n<256"),
            text.replace("align=256,256,256 n<=256", "align=256,3,256 n<=256"),
            text.replace("bf16 TN m=2048", "f64 TN m=2048"),
            text.replace("bf16 TN m=2048", "bf16 TX m=2048"),
            text.replace("compute 9.0\n", ""),
            format!("{text}{}", &last[..last.len() - 1]),
        ];
        for (i, bad) in cases.iter().enumerate() {
            assert!(
                parse(bad, &id()).is_err(),
                "case {i} should be rejected:\n{bad}"
            );
        }
        // Every prefix of a good file parses or is rejected, without panicking.
        for cut in 0..text.len() {
            let _ = parse(&text[..cut], &id());
        }
    }

    #[test]
    fn foreign_and_other_version_tables_are_rejected() {
        let text = render(&id(), &table());
        let other_lib = LibraryIdentity {
            cublaslt: 130_000,
            ..id()
        };
        assert!(matches!(
            parse(&text, &other_lib),
            Err(TableError::Foreign(_))
        ));
        let other_gpu = LibraryIdentity {
            device: "NVIDIA A100".into(),
            ..id()
        };
        assert!(matches!(
            parse(&text, &other_gpu),
            Err(TableError::Foreign(_))
        ));
        let newer = text.replace("cudagraph-gemm-algos 1", "cudagraph-gemm-algos 2");
        assert!(matches!(parse(&newer, &id()), Err(TableError::Format(_))));
    }

    fn temp_dir(test: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("cudagraph-gemm-algo-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn store_and_load_on_disk() {
        let dir = temp_dir("store");
        let path = dir.join(file_name(&id()));
        assert!(load(&path, &id()).is_empty(), "no file: empty");
        let t = table();
        store(&path, &id(), &t);
        assert_eq!(load(&path, &id()), t);
        // A second writer's entries are merged, not lost.
        let mut more = HashMap::new();
        let extra = key(1024, NChoice::Bucket(16));
        more.insert(
            extra,
            StoredAlgo {
                algo: [5; 8],
                workspace: 1,
            },
        );
        store(&path, &id(), &more);
        let loaded = load(&path, &id());
        assert_eq!(loaded.len(), 3);
        assert_eq!(loaded[&extra].algo, [5; 8]);
        // No temporary file is left behind.
        let files: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(files.len(), 1, "{files:?}");
        // A corrupt file or one of another library version loads as empty and is replaced by
        // the next write.
        std::fs::write(&path, "cudagraph-gemm-algos 1\ndevice NVIDIA H200\n\u{7f}").unwrap();
        assert!(load(&path, &id()).is_empty());
        let foreign = LibraryIdentity {
            cublaslt: 1,
            ..id()
        };
        std::fs::write(&path, render(&foreign, &t)).unwrap();
        assert!(load(&path, &id()).is_empty());
        store(&path, &id(), &more);
        assert_eq!(load(&path, &id()), more);
        std::fs::write(&path, [0xff, 0xfe, 0x00]).unwrap();
        assert!(load(&path, &id()).is_empty(), "not UTF-8");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
