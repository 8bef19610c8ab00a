//! NVRTC compilation of a kernel module straight to a CUBIN for the device's architecture (no
//! PTX JIT in the driver at load time), and the on-disk cache of those CUBINs.
//!
//! Cache key: the source, the architecture, NVRTC's version and the options, hashed with
//! FNV-1a (stable across Rust versions, unlike `DefaultHasher`). The folder is
//! `$CUDAGRAPH_CACHE_DIR`, else `$XDG_CACHE_HOME/cudagraph`, else `$HOME/.cache/cudagraph`;
//! `CUDAGRAPH_CACHE_DIR=off` disables it. A second start of a process compiles no kernel.

use std::ffi::{CStr, CString};
use std::path::PathBuf;

use cudarc::nvrtc::{result, sys};

/// Options every module is compiled with.
pub(crate) const OPTIONS: &[&str] = &["--std=c++17"];

/// 64-bit FNV-1a over several byte strings (separated, so ("ab","c") != ("a","bc")).
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in part.iter().chain(&[0xFF]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
    hash
}

/// NVRTC's version as `major.minor`.
pub(crate) fn version() -> Result<String, String> {
    let (mut major, mut minor) = (0i32, 0i32);
    // SAFETY: writes two ints through valid pointers.
    let status = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    status.result().map_err(|e| format!("{e:?}"))?;
    Ok(format!("{major}.{minor}"))
}

/// The cache folder, or `None` when disabled or no home is known.
pub fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("CUDAGRAPH_CACHE_DIR") {
        Some(v) if v == "off" => None,
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(|x| PathBuf::from(x).join("cudagraph"))
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/cudagraph"))
            }),
    }
}

/// Compiles `source` for `arch` (e.g. `sm_90`) to a CUBIN; `Err` carries NVRTC's log.
pub(crate) fn compile_cubin(name: &str, source: &str, arch: &str) -> Result<Vec<u8>, String> {
    let src = CString::new(source).map_err(|_| "source contains a NUL byte".to_string())?;
    let cname =
        CString::new(format!("{name}.cu")).map_err(|_| "name contains a NUL byte".to_string())?;
    let prog = result::create_program(&src, Some(&cname)).map_err(|e| format!("{e:?}"))?;
    let mut options: Vec<String> = OPTIONS.iter().map(|s| s.to_string()).collect();
    options.push(format!("--gpu-architecture={arch}"));
    // SAFETY: `prog` was just created from live C strings and is destroyed below, once.
    let compiled = unsafe { result::compile_program(prog, &options) };
    let out = match compiled {
        Ok(()) => cubin_of(prog),
        Err(e) => Err(format!("{e:?}: {}", log_of(prog))),
    };
    // SAFETY: `prog` is destroyed exactly once, after its last use.
    let _ = unsafe { result::destroy_program(prog) };
    out
}

fn cubin_of(prog: sys::nvrtcProgram) -> Result<Vec<u8>, String> {
    let mut size = 0usize;
    // SAFETY: `prog` is a successfully compiled program; `size` receives the CUBIN's length.
    unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }
        .result()
        .map_err(|e| format!("nvrtcGetCUBINSize: {e:?}"))?;
    let mut cubin = vec![0u8; size];
    // SAFETY: `cubin` holds exactly the `size` bytes NVRTC reported.
    unsafe { sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast()) }
        .result()
        .map_err(|e| format!("nvrtcGetCUBIN: {e:?}"))?;
    Ok(cubin)
}

fn log_of(prog: sys::nvrtcProgram) -> String {
    // SAFETY: `prog` is live; the log is a NUL-terminated C string NVRTC owns a copy of.
    match unsafe { result::get_program_log(prog) } {
        Ok(raw) => {
            // SAFETY: `raw` is NUL-terminated (NVRTC's contract for the log buffer).
            unsafe { CStr::from_ptr(raw.as_ptr()) }
                .to_string_lossy()
                .into_owned()
        }
        Err(e) => format!("(no log: {e:?})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_is_stable_and_separates_parts() {
        // Reference value of FNV-1a 64 over "a" followed by the separator byte.
        assert_eq!(fnv1a(&[b"a"]), fnv1a(&[b"a"]));
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
        assert_ne!(fnv1a(&[b"x"]), fnv1a(&[b"y"]));
        assert_eq!(fnv1a(&[]), 0xcbf2_9ce4_8422_2325);
    }
}
