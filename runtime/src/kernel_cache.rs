//! Kernel modules: CUDA C++ sources compiled with NVRTC at first use, once per runtime.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{CompileError, CompileOptions};

use crate::error::{Error, Result};

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

/// Compiled modules and loaded functions of one runtime.
#[derive(Debug, Default)]
pub(crate) struct KernelCache {
    modules: RefCell<HashMap<&'static str, Arc<CudaModule>>>,
    functions: RefCell<HashMap<(&'static str, &'static str), CudaFunction>>,
}

impl KernelCache {
    /// The function `name` of `module`, compiling and loading the module at first use.
    pub(crate) fn function(
        &self,
        ctx: &Arc<CudaContext>,
        module: &'static KernelModule,
        name: &'static str,
    ) -> Result<CudaFunction> {
        if let Some(f) = self.functions.borrow().get(&(module.name, name)) {
            return Ok(f.clone());
        }
        let loaded = self.module(ctx, module)?;
        let f = loaded
            .load_function(name)
            .map_err(Error::driver("cuModuleGetFunction"))?;
        self.functions
            .borrow_mut()
            .insert((module.name, name), f.clone());
        Ok(f)
    }

    fn module(
        &self,
        ctx: &Arc<CudaContext>,
        module: &'static KernelModule,
    ) -> Result<Arc<CudaModule>> {
        if let Some(m) = self.modules.borrow().get(module.name) {
            return Ok(m.clone());
        }
        if !crate::ffi::nvrtc_present() {
            return Err(Error::MissingLibrary { library: "nvrtc" });
        }
        let (major, minor) = ctx
            .compute_capability()
            .map_err(Error::driver("compute capability"))?;
        let opts = CompileOptions {
            arch: Some(arch_name(major, minor)),
            options: vec!["--std=c++17".into()],
            name: Some(format!("{}.cu", module.name)),
            ..Default::default()
        };
        let started = std::time::Instant::now();
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(module.source, opts).map_err(|e| {
            Error::Compile {
                module: module.name,
                log: compile_log(&e),
            }
        })?;
        let loaded = ctx
            .load_module(ptx)
            .map_err(Error::driver("cuModuleLoadData"))?;
        tracing::debug!(
            module = module.name,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "compiled kernel module"
        );
        self.modules
            .borrow_mut()
            .insert(module.name, loaded.clone());
        Ok(loaded)
    }
}

fn compile_log(e: &CompileError) -> String {
    match e {
        CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
        other => format!("{other:?}"),
    }
}

/// NVRTC's `--gpu-arch` value for a compute capability (a `&'static str`, as cudarc wants).
fn arch_name(major: i32, minor: i32) -> &'static str {
    match (major, minor) {
        (7, 0) => "compute_70",
        (7, 5) => "compute_75",
        (8, 0) => "compute_80",
        (8, 6) => "compute_86",
        (8, 7) => "compute_87",
        (8, 9) => "compute_89",
        (9, 0) => "compute_90",
        (10, 0) => "compute_100",
        (12, 0) => "compute_120",
        // An unknown newer chip runs PTX of the newest arch we know through the driver's JIT.
        _ if major >= 10 => "compute_100",
        _ => "compute_70",
    }
}

#[cfg(test)]
mod tests {
    use super::arch_name;

    #[test]
    fn arch_names() {
        assert_eq!(arch_name(9, 0), "compute_90");
        assert_eq!(arch_name(8, 6), "compute_86");
        assert_eq!(arch_name(11, 0), "compute_100");
    }
}
