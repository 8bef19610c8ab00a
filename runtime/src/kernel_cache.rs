//! Kernel modules: CUDA C++ sources compiled with NVRTC to CUBINs at first use, once per
//! runtime, and kept on disk (see [`nvrtc`](crate::nvrtc)) so a second start compiles nothing.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;

use crate::error::{Error, Result};
use crate::nvrtc;

/// One NVRTC program: a family of kernels compiled together.
///
/// The kernels crate declares one `static` per family; callers never name kernels by string
/// outside their typed launcher.
#[derive(Debug)]
pub struct KernelModule {
    /// The module's name (used in errors and the cache).
    pub name: &'static str,
    /// CUDA C++ source. It must include no header: NVRTC finds none without a toolkit.
    pub source: &'static str,
    /// Every `extern "C"` kernel the source defines, so a test can check that each one loads.
    pub functions: &'static [&'static str],
}

/// Counts of kernel modules loaded by a runtime.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KernelCacheStats {
    /// Modules compiled with NVRTC in this process.
    pub compiled: usize,
    /// Modules loaded from the on-disk cache.
    pub from_disk: usize,
    /// Time spent getting and loading modules (compile or read, plus `cuModuleLoadData`).
    pub time: Duration,
}

/// Compiled modules and loaded functions of one runtime, keyed by the address of the module's
/// `static` (not its name: a user's module named like a built-in one must not replace the
/// kernel a built-in launcher launches with its own argument list).
#[derive(Debug, Default)]
pub struct KernelCache {
    modules: RefCell<HashMap<usize, Arc<CudaModule>>>,
    functions: RefCell<HashMap<(usize, &'static str), CudaFunction>>,
    stats: RefCell<KernelCacheStats>,
}

/// The cache key of a module: the address of its `static`.
fn key(module: &'static KernelModule) -> usize {
    std::ptr::from_ref(module) as usize
}

impl KernelCache {
    /// The function `name` of `module`, compiling and loading the module at first use.
    pub fn function(
        &self,
        ctx: &Arc<CudaContext>,
        module: &'static KernelModule,
        name: &'static str,
    ) -> Result<CudaFunction> {
        if let Some(f) = self.functions.borrow().get(&(key(module), name)) {
            return Ok(f.clone());
        }
        let loaded = self.module(ctx, module)?;
        let f = loaded
            .load_function(name)
            .map_err(Error::driver("cuModuleGetFunction"))?;
        self.functions
            .borrow_mut()
            .insert((key(module), name), f.clone());
        Ok(f)
    }

    fn module(
        &self,
        ctx: &Arc<CudaContext>,
        module: &'static KernelModule,
    ) -> Result<Arc<CudaModule>> {
        if let Some(m) = self.modules.borrow().get(&key(module)) {
            return Ok(m.clone());
        }
        let started = Instant::now();
        let (cubin_bytes, mut from_disk) = cubin(ctx, module, true)?;
        let loaded = match ctx.load_module(Ptx::from_binary(cubin_bytes)) {
            Ok(m) => m,
            // A cached CUBIN the driver refuses (another driver, a damaged file): recompile.
            Err(e) if from_disk => {
                tracing::warn!(module = module.name, error = %e, "cached kernel module refused; recompiling");
                from_disk = false;
                let (fresh, _) = cubin(ctx, module, false)?;
                ctx.load_module(Ptx::from_binary(fresh))
                    .map_err(Error::driver("cuModuleLoadData"))?
            }
            Err(e) => return Err(Error::driver("cuModuleLoadData")(e)),
        };
        let mut stats = self.stats.borrow_mut();
        if from_disk {
            stats.from_disk += 1;
        } else {
            stats.compiled += 1;
        }
        stats.time += started.elapsed();
        tracing::debug!(
            module = module.name,
            from_disk,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "loaded kernel module"
        );
        self.modules
            .borrow_mut()
            .insert(key(module), loaded.clone());
        Ok(loaded)
    }

    /// How many modules came from the disk cache and how many were compiled.
    pub fn stats(&self) -> KernelCacheStats {
        *self.stats.borrow()
    }
}

/// The module's CUBIN: from the disk cache when present and `use_cache`, else compiled (and
/// cached).
fn cubin(
    ctx: &CudaContext,
    module: &'static KernelModule,
    use_cache: bool,
) -> Result<(Vec<u8>, bool)> {
    if !crate::ffi::nvrtc_present() {
        return Err(Error::MissingLibrary { library: "nvrtc" });
    }
    let compile_error = |log| Error::Compile {
        module: module.name,
        log,
    };
    let (major, minor) = ctx
        .compute_capability()
        .map_err(Error::driver("compute capability"))?;
    let arch = format!("sm_{major}{minor}");
    let version = nvrtc::version().map_err(compile_error)?;
    let key = nvrtc::fnv1a(&[
        module.source.as_bytes(),
        arch.as_bytes(),
        version.as_bytes(),
        nvrtc::OPTIONS.join(" ").as_bytes(),
    ]);
    let path = nvrtc::cache_dir().map(|dir| dir.join(format!("{}-{key:016x}.cubin", module.name)));
    if let Some(bytes) = path
        .as_ref()
        .filter(|_| use_cache)
        .and_then(|p| std::fs::read(p).ok())
    {
        if !bytes.is_empty() {
            return Ok((bytes, true));
        }
    }
    let cubin = nvrtc::compile_cubin(module.name, module.source, &arch).map_err(compile_error)?;
    if let Some(path) = path {
        store(&path, &cubin);
    }
    Ok((cubin, false))
}

/// Writes a cache entry atomically (temporary file + rename); a failure only costs a recompile.
fn store(path: &Path, bytes: &[u8]) {
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path))
        });
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "could not write the kernel cache");
    }
}

/// Whether NVRTC (which compiles kernel modules at first use) can be loaded on this machine.
pub fn nvrtc_available() -> bool {
    crate::ffi::nvrtc_present()
}
