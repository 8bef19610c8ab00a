//! The kernel modules: one NVRTC program per family, each the common prelude
//! (`cu/prelude.cuh`: bf16 helpers and block reductions) followed by the family's source.
//!
//! The sources include no header (NVRTC runs without an include path). Kernels are named
//! `<op>_<dtype>`; the op launchers in [`ops`](crate::ops) name them through the constants of
//! [`names`], the same constants the `functions` lists are made of.

use cudagraph_runtime::KernelModule;

/// Kernel entry point names (each an `extern "C" __global__` function of its module).
pub mod names {
    /// `norm`: RMS norm of each row.
    pub const RMS_NORM_BF16: &str = "rms_norm_bf16";
    /// `norm`: residual add then RMS norm of the rounded sum.
    pub const ADD_RMS_NORM_BF16: &str = "add_rms_norm_bf16";
    /// `rope`: RoPE on q and k (optionally after a per-head RMS norm of each), k and v written
    /// into the caches.
    pub const ROPE_KV_WRITE_BF16: &str = "rope_kv_write_bf16";
    /// `attention`: decode attention over the KV cache.
    pub const ATTENTION_DECODE_BF16: &str = "attention_decode_bf16";
    /// `elementwise`: `silu(gate) * up`.
    pub const SILU_MUL_BF16: &str = "silu_mul_bf16";
    /// `elementwise`: `a + b`.
    pub const ADD_BF16: &str = "add_bf16";
    /// `elementwise`: `a * b`.
    pub const MUL_BF16: &str = "mul_bf16";
    /// `elementwise`: `x * s` for a host scalar `s`.
    pub const SCALE_BF16: &str = "scale_bf16";
    /// `elementwise`: a range of columns copied between row-major tensors (concat, split).
    pub const COPY_COLUMNS_BF16: &str = "copy_columns_bf16";
    /// `elementwise`: `x + bias` broadcast over rows.
    pub const ADD_BIAS_BF16: &str = "add_bias_bf16";
    /// `elementwise`: embedding lookup (ids clamped to the table).
    pub const EMBEDDING_BF16: &str = "embedding_bf16";
    /// `elementwise`: deterministic uniform random fill of a bf16 tensor.
    pub const FILL_UNIFORM_BF16: &str = "fill_uniform_bf16";
    /// `elementwise`: deterministic uniform random fill of an f32 tensor.
    pub const FILL_UNIFORM_F32: &str = "fill_uniform_f32";
    /// `elementwise`: bf16 -> f32 conversion.
    pub const CAST_BF16_F32: &str = "cast_bf16_f32";
    /// `elementwise`: f32 -> bf16 conversion (round to nearest even).
    pub const CAST_F32_BF16: &str = "cast_f32_bf16";
    /// `gemm`: the built-in GEMM of a linear layer, `y = x @ w^T`.
    pub const LINEAR_BF16: &str = "linear_bf16";
    /// `gemv`: a one-row linear layer with an optional norm or activation prologue.
    pub const GEMV_R1_BF16: &str = "gemv_r1_bf16";
    /// `gemv`: the tensor-core variant of [`GEMV_R1_BF16`] for two to eight rows.
    pub const GEMV_MMA_BF16: &str = "gemv_mma_bf16";
    /// `attention`: RoPE, KV-cache write and decode attention in one kernel.
    pub const ROPE_ATTENTION_DECODE_BF16: &str = "rope_attention_decode_bf16";
    /// `attention`: causal attention of prompt chunks in a step of mixed sequences, by tiles.
    pub const ATTENTION_TILES_BF16: &str = "attention_tiles_bf16";
    /// `elementwise`: the index of each row's largest element (greedy sampling).
    pub const ARGMAX_ROWS_BF16: &str = "argmax_rows_bf16";
    /// The fused decode kernel with a RoPE scaling (`ops::RopeScaling`).
    pub const ROPE_ATTENTION_DECODE_SCALED_BF16: &str = "rope_attention_decode_scaled_bf16";
}

/// The common prelude every module starts with.
pub const PRELUDE: &str = include_str!("cu/prelude.cuh");

/// RMS norm kernels: [`names::RMS_NORM_BF16`], [`names::ADD_RMS_NORM_BF16`].
pub static NORM: KernelModule = KernelModule {
    name: "norm",
    source: concat!(include_str!("cu/prelude.cuh"), include_str!("cu/norm.cu")),
    functions: &[names::RMS_NORM_BF16, names::ADD_RMS_NORM_BF16],
};

/// Rotary embedding fused with the KV-cache write: [`names::ROPE_KV_WRITE_BF16`].
pub static ROPE: KernelModule = KernelModule {
    name: "rope",
    source: concat!(
        include_str!("cu/prelude.cuh"),
        include_str!("cu/rope_head.cuh"),
        include_str!("cu/rope.cu")
    ),
    functions: &[names::ROPE_KV_WRITE_BF16],
};

/// Decode attention: [`names::ATTENTION_DECODE_BF16`].
pub static ATTENTION: KernelModule = KernelModule {
    name: "attention",
    source: concat!(
        include_str!("cu/prelude.cuh"),
        include_str!("cu/rope_head.cuh"),
        include_str!("cu/attention.cu")
    ),
    functions: &[
        names::ATTENTION_DECODE_BF16,
        names::ROPE_ATTENTION_DECODE_BF16,
        names::ROPE_ATTENTION_DECODE_SCALED_BF16,
        names::ATTENTION_TILES_BF16,
    ],
};

/// Elementwise kernels: activation, adds, products, column copies, embedding, random fills and
/// casts.
pub static ELEMENTWISE: KernelModule = KernelModule {
    name: "elementwise",
    source: concat!(
        include_str!("cu/prelude.cuh"),
        include_str!("cu/elementwise.cu")
    ),
    functions: &[
        names::SILU_MUL_BF16,
        names::ADD_BF16,
        names::MUL_BF16,
        names::SCALE_BF16,
        names::COPY_COLUMNS_BF16,
        names::ADD_BIAS_BF16,
        names::EMBEDDING_BF16,
        names::FILL_UNIFORM_BF16,
        names::FILL_UNIFORM_F32,
        names::CAST_BF16_F32,
        names::CAST_F32_BF16,
        names::ARGMAX_ROWS_BF16,
    ],
};

/// The built-in GEMM (no tensor cores, no shared memory): [`names::LINEAR_BF16`].
pub static GEMM: KernelModule = KernelModule {
    name: "gemm",
    source: concat!(include_str!("cu/prelude.cuh"), include_str!("cu/gemm.cu")),
    functions: &[names::LINEAR_BF16],
};

/// The small-batch linear kernels with their prologues: [`names::GEMV_R1_BF16`],
/// [`names::GEMV_MMA_BF16`].
pub static GEMV: KernelModule = KernelModule {
    name: "gemv",
    source: concat!(include_str!("cu/prelude.cuh"), include_str!("cu/gemv.cu")),
    functions: &[names::GEMV_R1_BF16, names::GEMV_MMA_BF16],
};

/// Every module of the crate, so a GPU test can check that each declared function loads.
pub static ALL_MODULES: &[&KernelModule] = &[&NORM, &ROPE, &ATTENTION, &ELEMENTWISE, &GEMM, &GEMV];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_are_unique() {
        let mut names: Vec<_> = ALL_MODULES.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL_MODULES.len());
    }

    #[test]
    fn sources_include_no_header() {
        for module in ALL_MODULES {
            assert!(
                !module.source.contains("#include"),
                "module `{}` includes a header; NVRTC has no include path here",
                module.name
            );
            assert!(
                module.source.starts_with(PRELUDE),
                "module `{}`",
                module.name
            );
        }
    }

    /// The source without `//` comments (so a comment can't satisfy a check).
    fn code(source: &str) -> String {
        source
            .lines()
            .map(|line| line.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Kernels may be launched with programmatic dependent launch (see `PDL_WAIT` in
    /// `cu/prelude.cuh`): each must wait for the kernel before it before touching memory,
    /// itself or through the one shared body that does (`gemv_body`).
    #[test]
    fn every_kernel_waits_for_its_predecessor() {
        for module in ALL_MODULES {
            let body = code(&module.source[PRELUDE.len()..]);
            for kernel in body.split("extern \"C\" __global__ void ").skip(1) {
                let name = &kernel[..kernel.find('(').unwrap_or(0)];
                let end = kernel.find("\n}\n").unwrap_or(kernel.len());
                let waits = kernel[..end].contains("PDL_WAIT()");
                let shared_body = kernel[..end].contains("gemv_body<");
                assert!(
                    waits || shared_body,
                    "kernel `{name}` of module `{}` never calls PDL_WAIT()",
                    module.name
                );
            }
            if let Some(at) = body.find("__device__ void gemv_body(") {
                let def = &body[at..];
                let def = &def[..def.find("\n}\n").unwrap_or(def.len())];
                assert!(
                    def.contains("PDL_WAIT()"),
                    "gemv_body never calls PDL_WAIT()"
                );
            }
        }
        assert!(code(GEMV.source).contains("__device__ void gemv_body("));
    }

    #[test]
    fn every_declared_function_is_defined_once() {
        for module in ALL_MODULES {
            for function in module.functions {
                let definition = format!("extern \"C\" __global__ void {function}(");
                assert_eq!(
                    module.source.matches(&definition).count(),
                    1,
                    "module `{}` should define `{function}` exactly once",
                    module.name
                );
            }
            // And nothing is defined that is not declared (a kernel the GPU test would miss).
            let defined = module.source.matches("extern \"C\" __global__").count();
            assert_eq!(defined, module.functions.len(), "module `{}`", module.name);
        }
    }

    #[test]
    fn kernel_names_end_in_a_dtype() {
        for module in ALL_MODULES {
            for function in module.functions {
                assert!(
                    ["_bf16", "_f32"].iter().any(|s| function.ends_with(s)),
                    "`{function}` should be named <op>_<dtype>"
                );
            }
        }
    }

    /// Compiles every module with NVRTC, as the runtime does (`--std=c++17`, the H100's arch),
    /// when NVRTC can be loaded here (no GPU is needed); skipped otherwise.
    #[test]
    fn nvrtc_compiles_every_module() {
        use cudagraph_runtime::cudarc::nvrtc::{
            CompileError, CompileOptions, compile_ptx_with_opts,
        };

        if !crate::ffi::nvrtc_present() {
            eprintln!(
                "skipped: NVRTC not found (add libnvrtc's folder to LD_LIBRARY_PATH to run it)"
            );
            return;
        }
        for module in ALL_MODULES {
            let opts = CompileOptions {
                arch: Some("compute_90"),
                options: vec!["--std=c++17".into()],
                name: Some(format!("{}.cu", module.name)),
                ..Default::default()
            };
            let ptx = match compile_ptx_with_opts(module.source, opts) {
                Ok(ptx) => ptx.to_src(),
                Err(CompileError::CompileError { log, .. }) => {
                    panic!(
                        "module `{}` failed to compile:\n{}",
                        module.name,
                        log.to_string_lossy()
                    )
                }
                Err(other) => panic!("module `{}`: {other:?}", module.name),
            };
            for function in module.functions {
                assert!(
                    ptx.contains(&format!(".entry {function}(")),
                    "module `{}`: no entry `{function}` in the PTX",
                    module.name
                );
                if let Err(at) = waits_before_memory(&ptx, function) {
                    panic!(
                        "module `{}`: `{function}` does `{at}` before `griddepcontrol.wait` \
                         (programmatic dependent launch needs the wait first)",
                        module.name
                    );
                }
            }
        }
    }

    /// Whether the PTX entry `function` executes `griddepcontrol.wait` before its first memory
    /// access, branch or call (`ld` other than `ld.param`, `st`, `prefetch`, `atom`, `red`,
    /// `cp.async`, `tex`, `bra`, `call`); `Err` names the first such instruction.
    fn waits_before_memory(ptx: &str, function: &str) -> Result<(), String> {
        let start = ptx
            .find(&format!(".entry {function}("))
            .ok_or_else(|| "no entry".to_string())?;
        let body = &ptx[start..];
        let body = &body[body.find('{').unwrap_or(0)..];
        for line in body.lines() {
            let line = line.trim();
            if line.contains("griddepcontrol.wait") {
                return Ok(());
            }
            // `@%p1 bra $L__BB0_2;`: skip a predicate, take the opcode.
            let mut tokens = line.split_whitespace();
            let mut op = tokens.next().unwrap_or("");
            if op.starts_with('@') {
                op = tokens.next().unwrap_or("");
            }
            let touches = [
                "ld.", "st.", "prefetch", "atom", "red.", "cp.async", "tex.", "bra", "call",
            ]
            .iter()
            .any(|p| op.starts_with(p))
                && !op.starts_with("ld.param");
            if touches {
                return Err(line.to_string());
            }
            if line == "}" {
                break;
            }
        }
        Err("no griddepcontrol.wait".to_string())
    }

    /// The check above catches a load before the wait (the unit test of the checker itself).
    #[test]
    fn the_wait_check_catches_an_early_load() {
        let early = ".entry k(\n.param .u64 p\n)\n{\nld.param.u64 %rd1, [p];\nld.global.nc.u32 %r1, [%rd1];\ngriddepcontrol.wait;\nret;\n}\n";
        assert!(
            waits_before_memory(early, "k")
                .unwrap_err()
                .starts_with("ld.global")
        );
        let late = ".entry k(\n.param .u64 p\n)\n{\nld.param.u64 %rd1, [p];\ngriddepcontrol.launch_dependents;\ngriddepcontrol.wait;\nld.global.nc.u32 %r1, [%rd1];\nret;\n}\n";
        assert!(waits_before_memory(late, "k").is_ok());
        let branch = ".entry k(\n)\n{\n@%p1 bra $L__BB0_2;\ngriddepcontrol.wait;\n}\n";
        assert!(waits_before_memory(branch, "k").is_err());
        assert!(waits_before_memory(".entry k(\n)\n{\nret;\n}\n", "k").is_err());
    }
}
