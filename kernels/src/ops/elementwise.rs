//! Elementwise ops: SwiGLU activation, adds, products and scaling, embedding lookup, random
//! fills and casts.

use crate::{DType, Error, Result, Runtime, Tensor};

use super::check;
use crate::ffi::{self, Arg};
use crate::modules::{ELEMENTWISE, names};

/// Embedding lookup: `out[r, :] = table[ids[r], :]`.
///
/// `table`: bf16 `[vocab, hidden]`; `ids`: u32 `[n]`. An id `>= vocab` is clamped to
/// `vocab - 1` (never an out-of-bounds read). Returns bf16 `[n, hidden]`.
#[track_caller]
pub fn embedding(rt: &Runtime, table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    const OP: &str = "embedding";
    rt.enter_op(OP);
    check::tensor(rt, OP, "table", table, DType::BF16)?;
    check::rank(OP, "table", table, 2, "[vocab, hidden]")?;
    check::tensor(rt, OP, "ids", ids, DType::U32)?;
    check::rank(OP, "ids", ids, 1, "[n]")?;
    let (vocab, hidden) = (table.shape()[0], table.shape()[1]);
    if vocab == 0 || hidden == 0 {
        return Err(Error::invalid(
            OP,
            format!("`table` is empty (shape {:?})", table.shape()),
        ));
    }
    let n = ids.rows();
    check::nonempty(OP, n)?;
    let cfg = check::grid_2d(OP, (n, "batch rows"), (1, "1"), check::row_block(hidden), 0)?;

    let func = rt.function(&ELEMENTWISE, names::EMBEDDING_BF16)?;
    let out = rt.alloc(&[n, hidden], DType::BF16)?;
    ffi::launch(
        rt,
        &func,
        cfg,
        &[
            Arg::Ptr(table.device_ptr()),
            Arg::Ptr(ids.device_ptr()),
            Arg::Ptr(out.device_ptr()),
            Arg::I32(check::to_i32(OP, "n", n)?),
            Arg::I32(check::to_i32(OP, "vocab", vocab)?),
            Arg::I32(check::to_i32(OP, "hidden", hidden)?),
        ],
    )?;
    Ok(out)
}

/// SwiGLU activation: `out[r, j] = silu(gate_up[r, j]) * gate_up[r, I + j]`, with
/// `silu(g) = g / (1 + exp(-g))`, in f32, rounded once.
///
/// `gate_up`: bf16 `[..., 2 * I]` (the gate columns first, then the up columns; usually
/// `[n, 2 * I]`). Returns bf16 `[..., I]`.
#[track_caller]
pub fn silu_mul(rt: &Runtime, gate_up: &Tensor) -> Result<Tensor> {
    const OP: &str = "silu_mul";
    rt.enter_op(OP);
    check::tensor(rt, OP, "gate_up", gate_up, DType::BF16)?;
    let (rows, width) = check::rows_and_last(OP, "gate_up", gate_up)?;
    if width % 2 != 0 {
        return Err(Error::invalid(
            OP,
            format!(
                "`gate_up`'s last dimension ({width}) must be even: [gate | up] halves, shape {:?}",
                gate_up.shape()
            ),
        ));
    }
    check::nonempty(OP, rows)?;
    let inter = width / 2;
    let mut dims = gate_up.shape().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = inter;
    }
    let cfg = check::grid_stride(
        OP,
        check::product(OP, "rows * intermediate size", rows, inter)?,
    )?;

    let func = rt.function(&ELEMENTWISE, names::SILU_MUL_BF16)?;
    let out = rt.alloc(&dims, DType::BF16)?;
    ffi::launch(
        rt,
        &func,
        cfg,
        &[
            Arg::Ptr(gate_up.device_ptr()),
            Arg::Ptr(out.device_ptr()),
            Arg::U64(check::to_u64(OP, "rows", rows)?),
            Arg::U64(check::to_u64(OP, "intermediate size", inter)?),
        ],
    )?;
    Ok(out)
}

/// Elementwise `a + b` (bf16, same shape), in f32, rounded once. Returns a new tensor.
#[track_caller]
pub fn add(rt: &Runtime, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    const OP: &str = "add";
    rt.enter_op(OP);
    binary(rt, OP, names::ADD_BF16, a, b)
}

/// A same-shape binary kernel `name(a, b, out, numel)` over bf16 tensors.
fn binary(
    rt: &Runtime,
    op: &'static str,
    name: &'static str,
    a: &Tensor,
    b: &Tensor,
) -> Result<Tensor> {
    check::tensor(rt, op, "a", a, DType::BF16)?;
    check::tensor(rt, op, "b", b, DType::BF16)?;
    if a.shape() != b.shape() {
        return Err(Error::invalid(
            op,
            format!(
                "`a` {:?} and `b` {:?} must have the same shape",
                a.shape(),
                b.shape()
            ),
        ));
    }
    check::nonempty(op, a.numel())?;
    let cfg = check::grid_stride(op, a.numel())?;
    let func = rt.function(&ELEMENTWISE, name)?;
    let out = rt.alloc(a.shape(), DType::BF16)?;
    ffi::launch(
        rt,
        &func,
        cfg,
        &[
            Arg::Ptr(a.device_ptr()),
            Arg::Ptr(b.device_ptr()),
            Arg::Ptr(out.device_ptr()),
            Arg::U64(check::to_u64(op, "numel", a.numel())?),
        ],
    )?;
    Ok(out)
}

/// Elementwise product: `out = a * b`, in f32, rounded once. `a`, `b`: bf16 of the same
/// shape; returns a new tensor of that shape.
#[track_caller]
pub fn mul(rt: &Runtime, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    const OP: &str = "mul";
    rt.enter_op(OP);
    binary(rt, OP, names::MUL_BF16, a, b)
}

/// Scales by a host value: `out = x * s`, in f32, rounded once. `x`: bf16; returns a new
/// tensor of its shape. Inside a captured function `s` is frozen into the graph: pass a value
/// that changes between calls as a static argument (`static_args`).
#[track_caller]
pub fn scale(rt: &Runtime, x: &Tensor, s: f32) -> Result<Tensor> {
    const OP: &str = "scale";
    rt.enter_op(OP);
    check::tensor(rt, OP, "x", x, DType::BF16)?;
    check::nonempty(OP, x.numel())?;
    let cfg = check::grid_stride(OP, x.numel())?;
    let func = rt.function(&ELEMENTWISE, names::SCALE_BF16)?;
    let out = rt.alloc(x.shape(), DType::BF16)?;
    ffi::launch(
        rt,
        &func,
        cfg,
        &[
            Arg::Ptr(x.device_ptr()),
            Arg::Ptr(out.device_ptr()),
            Arg::U64(check::to_u64(OP, "numel", x.numel())?),
            Arg::F32(s),
        ],
    )?;
    Ok(out)
}

/// Adds a bias to every row: `out[..., j] = x[..., j] + bias[j]`, in f32, rounded once.
///
/// `x`: bf16 `[..., cols]`; `bias`: bf16 `[cols]`. Returns a new tensor of `x`'s shape.
#[track_caller]
pub fn add_bias(rt: &Runtime, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    const OP: &str = "add_bias";
    rt.enter_op(OP);
    add_bias_impl(rt, OP, x, bias)
}

/// [`add_bias`] without `enter_op`, for [`linear_bias`](super::linear_bias) which reports its
/// own op name.
pub(crate) fn add_bias_impl(
    rt: &Runtime,
    op: &'static str,
    x: &Tensor,
    bias: &Tensor,
) -> Result<Tensor> {
    check::tensor(rt, op, "x", x, DType::BF16)?;
    check::tensor(rt, op, "bias", bias, DType::BF16)?;
    let (rows, cols) = check::rows_and_last(op, "x", x)?;
    if bias.shape() != [cols] {
        return Err(Error::invalid(
            op,
            format!("`bias` must have shape [{cols}], got {:?}", bias.shape()),
        ));
    }
    check::nonempty(op, rows)?;
    let cfg = check::grid_stride(op, check::product(op, "rows * cols", rows, cols)?)?;

    let func = rt.function(&ELEMENTWISE, names::ADD_BIAS_BF16)?;
    let out = rt.alloc(x.shape(), DType::BF16)?;
    ffi::launch(
        rt,
        &func,
        cfg,
        &[
            Arg::Ptr(x.device_ptr()),
            Arg::Ptr(bias.device_ptr()),
            Arg::Ptr(out.device_ptr()),
            Arg::U64(check::to_u64(op, "rows", rows)?),
            Arg::U64(check::to_u64(op, "cols", cols)?),
        ],
    )?;
    Ok(out)
}

/// Fills `t` (bf16 or f32) in place with uniform random values in `[low, high)` (bf16
/// rounding may reach `high`).
///
/// Deterministic and independent of the launch configuration: element `i` is
/// [`reference::uniform_value`](crate::reference::uniform_value)`(seed, i, low, high)` (rounded
/// to bf16 for a bf16 tensor), so the host can reproduce any element. An empty tensor is left
/// as is. `t` is written through a shared reference (device memory; the stream orders it).
#[track_caller]
pub fn fill_uniform(rt: &Runtime, t: &Tensor, seed: u64, low: f32, high: f32) -> Result<()> {
    const OP: &str = "fill_uniform";
    rt.enter_op(OP);
    rt.check_device(OP, t)?;
    let name = match t.dtype() {
        DType::BF16 => names::FILL_UNIFORM_BF16,
        DType::F32 => names::FILL_UNIFORM_F32,
        other => {
            return Err(Error::invalid(
                OP,
                format!("`t` must be a bf16 or f32 tensor, got {other}"),
            ));
        }
    };
    if !(low.is_finite() && high.is_finite() && low <= high && (high - low).is_finite()) {
        return Err(Error::invalid(
            OP,
            format!("the range [{low}, {high}) must be finite with low <= high"),
        ));
    }
    if t.numel() == 0 {
        return Ok(());
    }
    let cfg = check::grid_stride(OP, t.numel())?;

    let func = rt.function(&ELEMENTWISE, name)?;
    ffi::launch(
        rt,
        &func,
        cfg,
        &[
            Arg::Ptr(t.device_ptr()),
            Arg::U64(check::to_u64(OP, "numel", t.numel())?),
            Arg::U64(seed),
            Arg::F32(low),
            Arg::F32(high),
        ],
    )
}

/// Converts `x` to `to` (bf16 <-> f32; bf16 rounding is round-to-nearest-even). Returns a new
/// tensor of `x`'s shape (a copy when `x` already has dtype `to`).
#[track_caller]
pub fn cast(rt: &Runtime, x: &Tensor, to: DType) -> Result<Tensor> {
    const OP: &str = "cast";
    rt.enter_op(OP);
    rt.check_device(OP, x)?;
    let name = match (x.dtype(), to) {
        (from, to) if from == to => return rt.duplicate(x),
        (DType::BF16, DType::F32) => names::CAST_BF16_F32,
        (DType::F32, DType::BF16) => names::CAST_F32_BF16,
        (from, to) => {
            return Err(Error::invalid(
                OP,
                format!("casting {from} to {to} is not supported (only bf16 <-> f32)"),
            ));
        }
    };
    check::nonempty(OP, x.numel())?;
    let cfg = check::grid_stride(OP, x.numel())?;

    let func = rt.function(&ELEMENTWISE, name)?;
    let out = rt.alloc(x.shape(), to)?;
    ffi::launch(
        rt,
        &func,
        cfg,
        &[
            Arg::Ptr(x.device_ptr()),
            Arg::Ptr(out.device_ptr()),
            Arg::U64(check::to_u64(OP, "numel", x.numel())?),
        ],
    )?;
    Ok(out)
}
