#!/usr/bin/env python3
"""The plain-PyTorch peer of `Llama::forward` (models/src/llama.rs), captured the way vLLM does it.

The same decoder as ours: Qwen3-0.6B-shaped (vocab 151936, hidden 1024, 28 layers, 16 q heads x
64, 8 KV heads, MLP 3072, RMSNorm eps 1e-6, RoPE theta 1e6, tied LM head), bf16, random weights
(torch.manual_seed(0), uniform scaled by fan-in like ours), a KV cache of [320 slots, 256
tokens, 8, 64] per layer for k and for v. One decode step per row: row b owns cache slot b, writes
its new key/value at position pos[b] (clamped to [0, 255], as our kernels do) and attends over
positions 0..=pos[b]. Written as Hugging Face writes it (RMSNorm in f32 ops, rotate_half RoPE with
cos/sin computed once per forward, matmul * scale, -inf mask, softmax in f32), with plain
torch / torch.nn.functional ops only: no custom kernels, no SDPA, and no torch.compile except in
compile mode. Every op is static-shaped (no .item(), no data-dependent shapes), so the forward
is capturable.

Capture as vLLM does: one graph pool (torch.cuda.graph_pool_handle()) shared by all 35 graphs,
sizes [1, 2, 4, 8, 16, ..., 256] captured largest first, static input buffers of the largest
size sliced [:size] per graph, one eager warm-up per size, then `with torch.cuda.graph(g,
pool=pool)`. Like vLLM (weak_ref_tensors), a graph's output is kept as a non-owning alias, so
its memory returns to the pool for later graphs (graphs replay one at a time); `--outputs strong`
keeps ordinary references instead.

Modes (--mode), each meant for a fresh process:
  default  torch.cuda.graph as shipped (its __enter__ synchronizes and empties the cache; it
           runs gc.collect() only when torch.compiler.config.force_cudagraph_gc is set)
  gc       gc.collect(); torch.cuda.empty_cache() before every graph (what vLLM and PyTorch
           did before their fixes)
  vllm     today's vLLM: gc.collect() + gc.freeze() once, and gc.collect /
           torch.cuda.empty_cache patched to no-ops during every capture
  compile  the strongest peer, vLLM's whole recipe: the same forward compiled once by
           torch.compile (Inductor, default mode: not "reduce-overhead", the graphs are captured
           here as vLLM captures its own), the batch dimension marked dynamic at the first call
           (the largest size) and Dynamo's guards skipped as vLLM skips them, so one compiled
           graph serves every size (with guards kept, --compile-guards keep, Dynamo compiles a
           second graph for batch 1); then captured as in vllm mode, one warm-up (a compiled
           call) per size. Inductor's and Triton's caches point at a new temporary folder, so
           compile_s is a cold compile.

Usage:
  python3 benches/peer_torch.py --mode default --out torch_default.json       (CUDA)
  python3 benches/peer_torch.py --mode compile --out torch_compile.json       (CUDA, ~1-2 min)
  python3 benches/peer_torch.py --mode compile --peer strong                  (the strong peer, issue 29)
  python3 benches/peer_torch.py --device cpu                                   (checks, no GPU)
  python3 benches/peer_torch.py --device cpu --mode compile                   (+ compile checks)
  python3 benches/peer_torch.py --tiny --iters 5                              (quick GPU smoke run)
  python3 benches/peer_torch.py --sizes 1,8,64 --batches 1,8,64               (fewer graphs)

Output: one JSON object (stdout, or --out FILE). Keys on CUDA:
  schema                "peer_torch/1"
  mode, kv_layout, peer, outputs, tiny   the options used (peer: plain or strong, see --peer;
                        "thd" = our cache layout [slots, T, hkv, d];
                        "hf" = [slots, hkv, T, d], Hugging Face's, no copy before the matmuls)
  config                the model's shapes; sizes: the 35 captured sizes; batches: timed sizes
  device                GPU name; versions {torch, cuda, cudnn, python, gpu, sm, gpu_memory_bytes,
                        driver_cuda (the CUDA version the driver supports)}
  startup               {import_s, cuda_init_s, weights_s, first_forward_s, capture_s, total_s}
                        (+ compile_s in compile mode, whose first_forward_s is null: the first
                        compiled call is part of compile_s): total_s = script start (before
                        `import torch`) to all graphs captured
  capture_s             wall time of capturing all 35 sizes, warm-ups included
                        (perf_counter, synchronize at both ends)
  capture_parts         {warmup_s (eager warm-ups, synchronized), graph_s (the `with
                        torch.cuda.graph` blocks: sync + empty_cache + record + instantiate),
                        reclaim_s (gc mode: the explicit gc.collect + empty_cache)}
  capture_per_size      [{size, warmup_s, graph_s, reclaim_s}] in capture order
  memory                {allocated_before, reserved_before, allocated_after, reserved_after,
                        reserved_after_empty_cache, reserved_bytes_all_current_before/after
                        (torch.cuda.memory_stats), allocated_delta, reserved_delta,
                        reserved_delta_after_empty_cache, pool_segments_bytes (segments of the
                        graph pool in torch.cuda.memory_snapshot()), driver_used_delta
                        (cudaMemGetInfo)}; "before" = weights, cache, static buffers and one
                        eager forward exist, caches emptied
  pool_bytes            the graph pool: pool_segments_bytes, else reserved_delta_after_empty_cache
  pool_bytes_source     which of the two
  replay_us_events      {"1","8","64","256"}: median g.replay() time between two CUDA events
  replay_us_wall        same, host wall time of g.replay() + synchronize
  run_us_wall           host wall time of the two static-buffer copies + g.replay() + synchronize
                        (what our run() does)
  replay_host_us        host wall time of the static copies + g.replay(), no synchronize (the GPU
                        idle before each): what a serving loop pays on the CPU
  eager_us              wall time of forward() + synchronize (compile mode: one compiled call
                        without a graph, its inputs copied into the static buffers beforehand)
  replay_vs_eager_rel_err   ||graph - eager|| / ||eager|| of the logits, same inputs (compile mode:
                        against the compiled call; replay_vs_uncompiled_eager_rel_err: against
                        the plain forward)
  kernels_per_forward   GPU kernels (memcpy/memset excluded) in one eager forward at n = 1
                        (compile mode: one compiled call) (torch.profiler, chrome-trace events
                        of category "kernel")
  kernels_per_forward_by_size {"1","256"}; kernels_per_forward_events: the same count from
                        profiler FunctionEvents; memcpy_memset_per_forward; kernels_per_replay
                        (kernels profiled in one replay of the smallest graph);
                        kernel_count_detail: the raw counts of every profile
  compile_s, compile    compile mode: compile_s = the first compiled calls until one compiles
                        nothing more (cold caches); compile {backend, mode, fullgraph, dynamic,
                        guards, inductor_cache_dir, cold_cache, calls [{size, s,
                        graphs_compiled}], graphs_compiled (Dynamo's unique_graphs counter),
                        recompiles (graphs compiled after the first call; with guards skipped
                        none can happen), recompiles_by_phase, graph_breaks,
                        graph_break_reasons}; recompiles (the same count, top level)
  iters, warmup         timing iterations (median over iters, after warmup); the timing loops
                        draw fresh random tokens and positions for every iteration
On --device cpu|meta: {schema, device, versions, config, selftest: {...}, ok}. With --mode compile
the self-check adds compile_meta_dynamo (full-size shapes, all 35 sizes, Dynamo alone: Inductor
generates no code for the meta device) and, on cpu, compile_cpu_inductor (tiny config, the GPU
run's settings, one graph for sizes 1..8, numerics against the plain forward); a check that
cannot run here (no C++ compiler for Inductor, say) is skipped with the reason printed.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from unittest import mock

SCRIPT_START = time.perf_counter()


def _mode_from_argv(argv: list[str]) -> str | None:
    """The --mode value, read before argparse runs (argparse needs torch imported first)."""
    for i, arg in enumerate(argv):
        if arg == "--mode" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--mode="):
            return arg.split("=", 1)[1]
    return None


def _fresh_compile_caches() -> str | None:
    """In compile mode, point Inductor's and Triton's caches at a new temporary folder, so that
    compile_s is a cold compile (a warm cache would hide most of it). Done before `import torch`
    because Inductor's compile workers inherit the environment when they start. The folder is
    removed at exit."""
    if _mode_from_argv(sys.argv[1:]) != "compile":
        return None
    root = tempfile.mkdtemp(prefix="peer_torch_compile_")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(root, "inductor")
    os.environ["TRITON_CACHE_DIR"] = os.path.join(root, "triton")
    atexit.register(shutil.rmtree, root, True)
    return root


COMPILE_CACHE_DIR = _fresh_compile_caches()
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

IMPORT_S = time.perf_counter() - SCRIPT_START

# The captured sizes, as `#[cuda_graph(sizes = [1, 2, 4, 8..=256 step 8])]` and vLLM.
SIZES = [1, 2, 4] + list(range(8, 257, 8))
BATCHES = [1, 8, 64, 256]


@dataclass(frozen=True)
class Config:
    vocab: int
    hidden: int
    layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    rms_eps: float
    rope_theta: float
    cache_slots: int
    cache_tokens: int

    @staticmethod
    def qwen3_0_6b_shaped() -> "Config":
        # LlamaConfig::qwen3_0_6b_shaped()
        return Config(151_936, 1024, 28, 16, 8, 64, 3072, 1e-6, 1_000_000.0, 320, 256)

    @staticmethod
    def tiny() -> "Config":
        # LlamaConfig::tiny()
        return Config(1000, 256, 2, 4, 2, 64, 512, 1e-6, 10_000.0, 320, 64)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Hugging Face's LlamaRMSNorm."""
    dtype = x.dtype
    h = x.float()
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + eps)
    return weight * h.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Layer:
    __slots__ = ("attn_norm", "qkv", "o_proj", "mlp_norm", "gate_up", "down", "k_cache", "v_cache")


class Decoder:
    """Weights, KV cache and forward of one decode step; mirrors `Llama` in models/src/llama.rs."""

    def __init__(self, cfg: Config, device: torch.device, kv_layout: str = "thd", seed: int = 0,
                 peer: str = "plain"):
        if cfg.q_heads % cfg.kv_heads or cfg.q_heads * cfg.head_dim != cfg.hidden:
            raise ValueError("q_heads must be a multiple of kv_heads and q_heads * head_dim == hidden")
        if kv_layout not in ("thd", "hf"):
            raise ValueError(f"kv_layout must be thd or hf, got {kv_layout}")
        if peer not in ("plain", "strong"):
            raise ValueError(f"peer must be plain or strong, got {peer}")
        if peer == "strong" and kv_layout != "hf":
            raise ValueError("the strong peer keeps its cache as [slots, kv_heads, T, head_dim]: kv_layout hf")
        self.cfg, self.device, self.kv_layout, self.peer = cfg, device, kv_layout, peer
        torch.manual_seed(seed)
        bf16 = torch.bfloat16

        def uniform(shape, low, high):
            return torch.empty(shape, dtype=bf16, device=device).uniform_(low, high)

        def weight(shape, fan_in):
            s = 1.0 / math.sqrt(fan_in)
            return uniform(shape, -s, s)

        h, d = cfg.hidden, cfg.head_dim
        qkv_width = (cfg.q_heads + 2 * cfg.kv_heads) * d
        if kv_layout == "thd":  # ours: [slots, T, hkv, d]
            cache_shape = (cfg.cache_slots, cfg.cache_tokens, cfg.kv_heads, d)
        else:  # Hugging Face's: [slots, hkv, T, d]
            cache_shape = (cfg.cache_slots, cfg.kv_heads, cfg.cache_tokens, d)
        self.embed = uniform((cfg.vocab, h), -1.0, 1.0)
        self.layers = []
        for _ in range(cfg.layers):
            layer = Layer()
            layer.attn_norm = uniform((h,), 0.9, 1.1)  # near 1, as trained models have them
            layer.qkv = weight((qkv_width, h), h)
            layer.o_proj = weight((h, cfg.q_heads * d), h)
            layer.mlp_norm = uniform((h,), 0.9, 1.1)
            layer.gate_up = weight((2 * cfg.intermediate, h), h)
            layer.down = weight((h, cfg.intermediate), cfg.intermediate)
            layer.k_cache = uniform(cache_shape, -1.0, 1.0)
            layer.v_cache = uniform(cache_shape, -1.0, 1.0)
            self.layers.append(layer)
        self.final_norm = uniform((h,), 0.9, 1.1)
        # Constant index buffers: no arange kernel per forward.
        self.row_ids = torch.arange(cfg.cache_slots, dtype=torch.int64, device=device)
        self.t_ids = torch.arange(cfg.cache_tokens, dtype=torch.int64, device=device)
        # Hugging Face's default RoPE: inv_freq = 1 / theta^(2i / d), f32.
        self.inv_freq = 1.0 / (
            cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d)
        )

    def norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The RMS norm of this peer: F.rms_norm (strong) or Hugging Face's (plain)."""
        if self.peer == "strong":
            return F.rms_norm(x, (x.shape[-1],), weight, self.cfg.rms_eps)
        return rms_norm(x, weight, self.cfg.rms_eps)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits [n, vocab] bf16 of the next token of n sequences; writes k, v into the cache."""
        if self.peer == "strong":
            return self.forward_strong(tokens, positions)
        cfg = self.cfg
        n = tokens.shape[0]
        hq, hkv, d = cfg.q_heads, cfg.kv_heads, cfg.head_dim
        group = hq // hkv
        scale = d**-0.5

        residual = F.embedding(tokens, self.embed)  # [n, hidden]
        pos = positions.long().clamp(0, cfg.cache_tokens - 1)  # [n], as our kernels clamp
        rows = self.row_ids[:n]  # row b uses cache slot b
        # cos/sin once per forward, as Hugging Face's rotary embedding does; bf16 like HF.
        freqs = pos.float()[:, None] * self.inv_freq[None, :]  # [n, d/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos().to(residual.dtype)[:, None, :]  # [n, 1, d]
        sin = emb.sin().to(residual.dtype)[:, None, :]
        # Cache positions after pos are masked: [n, 1, 1, T].
        masked = (self.t_ids[None, :] > pos[:, None])[:, None, None, :]

        for layer in self.layers:
            h = rms_norm(residual, layer.attn_norm, cfg.rms_eps)
            qkv = F.linear(h, layer.qkv)
            q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
            q = q.view(n, hq, d)
            k = k.view(n, hkv, d)
            v = v.view(n, hkv, d)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            qg = q.view(n, hkv, group, d)  # query head j uses kv head j // group
            if self.kv_layout == "thd":
                layer.k_cache[rows, pos] = k  # index_put_ at [b, pos[b]]
                layer.v_cache[rows, pos] = v
                keys = layer.k_cache[:n].permute(0, 2, 3, 1)  # [n, hkv, d, T] (matmul copies)
                values = layer.v_cache[:n].transpose(1, 2)  # [n, hkv, T, d]
            else:
                layer.k_cache[rows, :, pos] = k
                layer.v_cache[rows, :, pos] = v
                keys = layer.k_cache[:n].transpose(2, 3)  # [n, hkv, d, T] (a view)
                values = layer.v_cache[:n]  # [n, hkv, T, d]
            scores = torch.matmul(qg, keys) * scale  # [n, hkv, group, T]
            scores = scores.masked_fill(masked, float("-inf"))
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            ctx = torch.matmul(probs, values).reshape(n, hq * d)  # [n, hkv, group, d] -> rows
            residual = residual + F.linear(ctx, layer.o_proj)
            h = rms_norm(residual, layer.mlp_norm, cfg.rms_eps)
            gate, up = F.linear(h, layer.gate_up).chunk(2, dim=-1)
            residual = residual + F.linear(F.silu(gate) * up, layer.down)
        h = rms_norm(residual, self.final_norm, cfg.rms_eps)
        return F.linear(h, self.embed)  # tied LM head

    def forward_strong(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The step as a performance-minded PyTorch user writes it (issue 29): F.rms_norm, one
        fused q/k/v and one fused gate/up linear, RoPE on the fused q/k heads at once, the cache
        as [slots, kv_heads, T, head_dim] written in place by index, and
        F.scaled_dot_product_attention over a [n, kv_heads, group, head_dim] view of the
        queries, so keys and values are never repeated or copied."""
        cfg = self.cfg
        n = tokens.shape[0]
        hq, hkv, d = cfg.q_heads, cfg.kv_heads, cfg.head_dim
        group = hq // hkv

        residual = F.embedding(tokens, self.embed)  # [n, hidden]
        pos = positions.long().clamp(0, cfg.cache_tokens - 1)
        rows = self.row_ids[:n]
        freqs = pos.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos().to(residual.dtype)[:, None, :]  # [n, 1, d]
        sin = emb.sin().to(residual.dtype)[:, None, :]
        # Positions 0..=pos may be attended: [n, 1, 1, T], broadcast over heads and the group.
        allowed = (self.t_ids[None, :] <= pos[:, None])[:, None, None, :]

        for layer in self.layers:
            h = self.norm(residual, layer.attn_norm)
            qkv = F.linear(h, layer.qkv).view(n, hq + 2 * hkv, d)
            qk = qkv[:, : hq + hkv]  # q and k heads, rotated together
            qk = qk * cos + rotate_half(qk) * sin
            q, k = qk.split([hq, hkv], dim=1)
            v = qkv[:, hq + hkv :]
            layer.k_cache[rows, :, pos] = k
            layer.v_cache[rows, :, pos] = v
            ctx = F.scaled_dot_product_attention(
                q.view(n, hkv, group, d), layer.k_cache[:n], layer.v_cache[:n], attn_mask=allowed
            )  # [n, hkv, group, d]
            residual = residual + F.linear(ctx.reshape(n, hq * d), layer.o_proj)
            h = self.norm(residual, layer.mlp_norm)
            gate, up = F.linear(h, layer.gate_up).chunk(2, dim=-1)
            residual = residual + F.linear(F.silu(gate) * up, layer.down)
        h = self.norm(residual, self.final_norm)
        return F.linear(h, self.embed)  # tied LM head

    def key_at(self, layer: Layer, b: int, t: int) -> torch.Tensor:
        """The cached key [hkv, d] of slot b at position t."""
        return layer.k_cache[b, t] if self.kv_layout == "thd" else layer.k_cache[b, :, t]

    def value_at(self, layer: Layer, b: int, t: int) -> torch.Tensor:
        return layer.v_cache[b, t] if self.kv_layout == "thd" else layer.v_cache[b, :, t]


# --------------------------------------------------------------------------------------------
# Checks that need no GPU (--device cpu | meta)
# --------------------------------------------------------------------------------------------


def reference_forward(model: Decoder, tokens: list[int], positions: list[int]) -> torch.Tensor:
    """A naive per-row f32 decode step written from our kernels' definitions (norm.cu, rope.cu,
    attention.cu, elementwise.cu), reading the model's weights and a copy of its cache as it is
    now. Returns f32 logits [n, vocab] and leaves the model untouched."""
    cfg = model.cfg
    hq, hkv, d = cfg.q_heads, cfg.kv_heads, cfg.head_dim
    half, group = d // 2, hq // hkv

    def norm(x, w):
        return x * torch.rsqrt((x * x).mean() + cfg.rms_eps) * w.float()

    def rope(x, pos):  # rope.cu: out[i] = x1 c - x2 s, out[i + half] = x2 c + x1 s
        i = torch.arange(half, dtype=torch.float64)
        angle = pos / (cfg.rope_theta ** (2 * i / d))
        c, s = torch.cos(angle).float(), torch.sin(angle).float()
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)

    caches = [
        (
            [[model.key_at(layer, b, t).float().clone() for t in range(cfg.cache_tokens)] for b in range(len(tokens))],
            [[model.value_at(layer, b, t).float().clone() for t in range(cfg.cache_tokens)] for b in range(len(tokens))],
        )
        for layer in model.layers
    ]
    out = []
    for b, (tok, p) in enumerate(zip(tokens, positions, strict=True)):
        p = min(max(p, 0), cfg.cache_tokens - 1)
        x = model.embed[min(tok, cfg.vocab - 1)].float()
        for layer, (kc, vc) in zip(model.layers, caches, strict=True):
            qkv = layer.qkv.float() @ norm(x, layer.attn_norm)
            q = rope(qkv[: hq * d].view(hq, d), p)
            k = rope(qkv[hq * d : (hq + hkv) * d].view(hkv, d), p)
            v = qkv[(hq + hkv) * d :].view(hkv, d)
            kc[b][p], vc[b][p] = k, v
            ctx = torch.empty(hq, d)
            for head in range(hq):
                kvh = head // group
                keys = torch.stack([kc[b][t][kvh] for t in range(p + 1)])  # [p+1, d]
                vals = torch.stack([vc[b][t][kvh] for t in range(p + 1)])
                w = torch.softmax(keys @ q[head] / math.sqrt(d), dim=0)
                ctx[head] = w @ vals
            x = x + layer.o_proj.float() @ ctx.reshape(-1)
            gu = layer.gate_up.float() @ norm(x, layer.mlp_norm)
            g, u = gu[: cfg.intermediate], gu[cfg.intermediate :]
            x = x + layer.down.float() @ (g / (1 + torch.exp(-g)) * u)
        out.append(model.embed.float() @ norm(x, model.final_norm))
    return torch.stack(out)


# Ops that synchronize with the host or have data-dependent output shapes: none may appear in a
# capturable forward.
FORBIDDEN_OPS = (
    "_local_scalar_dense",  # .item(), int(t), bool(t)
    "nonzero",
    "masked_select",
    "unique",
    "_unique",
    "_unique2",
    "unique_consecutive",
    "unique_dim",
    "is_nonzero",
    "equal",
    "allclose",
    "repeat_interleave.Tensor",
    "index.Tensor_bool",  # boolean-mask indexing
)


def scan_ops(fn) -> tuple[dict[str, int], list[str]]:
    """Runs fn under a TorchDispatchMode; returns (aten op counts, forbidden ops seen)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    counts: dict[str, int] = {}
    bad: list[str] = []

    class Scan(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.name().split("::")[-1]  # e.g. "index_put_" or "index.Tensor"
            counts[name] = counts.get(name, 0) + 1
            base = name.split(".")[0]
            if base in FORBIDDEN_OPS or name in FORBIDDEN_OPS:
                bad.append(name)
            if base == "index" and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool
                for i in (args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else [])
            ):
                bad.append(name + " (bool mask)")
            return func(*args, **(kwargs or {}))

    with Scan():
        fn()
    return counts, bad


# (kv_layout, peer) pairs the checks cover.
VARIANTS = (("thd", "plain"), ("hf", "plain"), ("hf", "strong"))


def selftest(args) -> dict:
    results: dict = {}
    ok = True

    # 1. Full-size shapes on the meta device (no memory, no compute), every captured size, both
    #    layouts: shapes, dtypes, and no host-synchronizing / data-dependent op.
    full = Config.qwen3_0_6b_shaped()
    meta = torch.device("meta")
    shapes = {}
    for layout, peer in VARIANTS:
        m = Decoder(full, meta, layout, peer=peer)
        layout = layout if peer == "plain" else f"{layout}_{peer}"
        for n in SIZES:
            tok = torch.empty(n, dtype=torch.int32, device=meta)
            pos = torch.empty(n, dtype=torch.int32, device=meta)
            if n in (1, 256):
                counts, bad = scan_ops(partial(m.forward, tok, pos))
                shapes[f"{layout}_ops_n{n}"] = sum(counts.values())
                if bad:
                    ok = False
                    shapes[f"{layout}_forbidden_n{n}"] = sorted(set(bad))
            out = m.forward(tok, pos)
            if tuple(out.shape) != (n, full.vocab) or out.dtype != torch.bfloat16:
                ok = False
                shapes[f"{layout}_bad_n{n}"] = [list(out.shape), str(out.dtype)]
        del m
    shapes["sizes_checked"] = len(SIZES)
    results["meta_full_config"] = shapes
    if args.mode == "compile":
        results["compile_meta_dynamo"] = compile_check_meta()
        ok = ok and results["compile_meta_dynamo"].get("ok", True)

    if args.device == "meta":
        results["ok"] = ok
        return results

    # 2. Numerics on CPU, tiny config (or --tiny's): forward vs the naive f32 reference, cache
    #    writes at [row, pos], int32 and int64 token ids, a position past the cache end (clamped).
    cfg = Config.tiny()
    dev = torch.device("cpu")
    numerics = {}
    for layout, peer in VARIANTS:
        m = Decoder(cfg, dev, layout, peer=peer)
        gen = torch.Generator().manual_seed(123)
        n = 5
        tokens = torch.randint(0, cfg.vocab, (n,), generator=gen, dtype=torch.int32)
        positions = torch.randint(0, cfg.cache_tokens, (n,), generator=gen, dtype=torch.int32)
        positions[0], positions[1] = 0, cfg.cache_tokens + 7  # first position; clamped
        ref = reference_forward(m, tokens.tolist(), positions.tolist())
        counts, bad = scan_ops(partial(m.forward, tokens, positions))  # writes the cache
        out = m.forward(tokens, positions)  # same inputs again: same cache writes, same result
        err = ((out.float() - ref).norm() / ref.norm()).item()
        # The cache now holds this step's keys at [b, clamp(pos[b])]: compare with recomputation.
        layer0 = m.layers[0]
        h = m.norm(F.embedding(tokens, m.embed), layer0.attn_norm)
        v_new = F.linear(h, layer0.qkv)[:, (cfg.q_heads + cfg.kv_heads) * cfg.head_dim :]
        cache_ok = all(
            torch.equal(m.value_at(layer0, b, min(int(p), cfg.cache_tokens - 1)).reshape(-1), v_new[b])
            for b, p in enumerate(positions.tolist())
        )
        out64 = m.forward(tokens.long(), positions)
        same64 = torch.equal(out64, out)
        # Batch of 1 agrees with row 0 of the batch (rows are independent).
        out1 = m.forward(tokens[:1], positions[:1])
        row_err = ((out1[0].float() - out[0].float()).norm() / out[0].float().norm()).item()
        numerics[layout if peer == "plain" else f"{layout}_{peer}"] = {
            "rel_err_vs_reference": err,
            "cache_write_ok": cache_ok,
            "int64_tokens_same": same64,
            "row_independence_rel_err": row_err,
            "ops": sum(counts.values()),
            "forbidden": sorted(set(bad)),
            "out_shape": list(out.shape),
        }
        if not (err < 2e-2 and cache_ok and same64 and row_err < 1e-2 and not bad and out.shape == (n, cfg.vocab)):
            ok = False
    results["cpu_tiny"] = numerics
    if args.mode == "compile":
        results["compile_cpu_inductor"] = compile_check_cpu()
        ok = ok and results["compile_cpu_inductor"].get("ok", True)
    results["ok"] = ok
    return results


def skipped_check(where: str, reason: str) -> dict:
    print(f"peer_torch: compile check on {where} skipped: {reason}", file=sys.stderr)
    return {"skipped": reason}


def count_graphs_over_sizes(compiled, static_tokens, static_pos, sizes: list[int], vocab: int) -> dict:
    """Calls compiled on every size, the largest first with its batch dim marked dynamic;
    returns {graphs, graph_breaks, bad_shapes}."""
    torch._dynamo.reset()
    base = dynamo_graph_count() or 0
    breaks = sum(dynamo_graph_breaks().values())
    bad = []
    for i, n in enumerate(sorted(sizes, reverse=True)):
        tok, pos = static_tokens[:n], static_pos[:n]
        if i == 0:
            mark_batch_dynamic(tok, pos)
        out = compiled(tok, pos)
        if tuple(out.shape) != (n, vocab):
            bad.append([n, list(out.shape)])
    return {
        "graphs": (dynamo_graph_count() or 0) - base,
        "graph_breaks": sum(dynamo_graph_breaks().values()) - breaks,
        "bad_shapes": bad,
    }


def compile_check_meta() -> dict:
    """Full-size shapes, all 35 sizes, Dynamo alone (backend "eager"): Inductor generates no
    code for the meta device, so only the trace is checked here: no graph break, and with
    Dynamo's guards kept at most 2 graphs (the general one, and batch 1, which Dynamo
    specializes); the GPU run skips the guards as vLLM does and compiles 1."""
    full = Config.qwen3_0_6b_shaped()
    meta = torch.device("meta")
    try:
        m = Decoder(full, meta, "thd")
        st = torch.empty(max(SIZES), dtype=torch.int32, device=meta)
        sp = torch.empty(max(SIZES), dtype=torch.int32, device=meta)
        got = count_graphs_over_sizes(compile_forward(m, "keep", backend="eager"), st, sp, SIZES, full.vocab)
    except Exception as e:  # noqa: BLE001 - an environment without a working Dynamo
        return skipped_check("meta", f"torch.compile (Dynamo, backend eager) failed: {e!r}"[:500])
    got["ok"] = got["graphs"] <= 2 and got["graph_breaks"] == 0 and not got["bad_shapes"]
    return got


def compile_check_cpu() -> dict:
    """Tiny config on the CPU with the GPU run's settings (Inductor, default mode, guards
    skipped): one graph for sizes 1..8, and the compiled forward agrees with the plain one."""
    cfg = Config.tiny()
    cpu = torch.device("cpu")
    sizes = [8, 5, 2, 1]
    try:
        m = Decoder(cfg, cpu, "thd")
        gen = torch.Generator().manual_seed(7)
        st = torch.randint(0, cfg.vocab, (max(sizes),), generator=gen, dtype=torch.int32)
        sp = torch.randint(0, cfg.cache_tokens, (max(sizes),), generator=gen, dtype=torch.int32)
        compiled = compile_forward(m, "skip")
        got = count_graphs_over_sizes(compiled, st, sp, sizes, cfg.vocab)
        errs = {}
        for n in sizes:
            ref = m.forward(st[:n], sp[:n]).float()
            errs[str(n)] = rel_err(compiled(st[:n], sp[:n]).float(), ref)
    except Exception as e:  # noqa: BLE001 - e.g. no C++ compiler for Inductor's CPU code
        return skipped_check("cpu", f"torch.compile (Inductor) failed: {e!r}"[:500])
    got["rel_err_vs_plain"] = errs
    got["ok"] = got["graphs"] == 1 and got["graph_breaks"] == 0 and not got["bad_shapes"] and max(errs.values()) < 2e-2
    return got


# --------------------------------------------------------------------------------------------
# CUDA: capture, memory, replay, kernels
# --------------------------------------------------------------------------------------------


def weak_alias(t: torch.Tensor) -> torch.Tensor:
    """A tensor over t's memory that does not own it (vLLM's weak_ref_tensors)."""
    storage = torch._C._construct_storage_from_data_pointer(
        t.untyped_storage().data_ptr(), t.device, t.untyped_storage().nbytes()
    )
    alias = torch.empty((), dtype=t.dtype, device=t.device)
    alias.set_(storage, t.storage_offset(), t.size(), t.stride())
    return alias


@contextmanager
def vllm_capture_patches():
    """vLLM's capture: no gc.collect / empty_cache inside torch.cuda.graph."""
    with ExitStack() as stack:
        stack.enter_context(mock.patch("gc.collect", lambda *a, **k: 0))
        stack.enter_context(mock.patch("torch.cuda.empty_cache", lambda: None))
        yield


def mem_state() -> dict:
    stats = torch.cuda.memory_stats()
    free, total = torch.cuda.mem_get_info()
    return {
        "allocated": torch.cuda.memory_allocated(),
        "reserved": torch.cuda.memory_reserved(),
        "reserved_bytes_all_current": stats.get("reserved_bytes.all.current"),
        "driver_used": total - free,
    }


def pool_segment_bytes(pool) -> int | None:
    try:
        want = tuple(pool)
        return sum(
            s["total_size"]
            for s in torch.cuda.memory_snapshot()
            if tuple(s.get("segment_pool_id", ())) == want
        )
    except Exception:  # noqa: BLE001 - private format; report None rather than fail
        return None


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def count_kernels(fn) -> dict:
    """GPU kernels launched by fn (memcpy/memset apart), from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    result: dict = {}
    path = None
    try:
        fd, path = tempfile.mkstemp(suffix=".json")
        os.close(fd)
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
        events = trace.get("traceEvents", trace) if isinstance(trace, dict) else trace
        cats = [e.get("cat", "") for e in events if isinstance(e, dict) and e.get("ph") == "X"]
        result["kernels"] = sum(1 for c in cats if c.lower() == "kernel")
        result["memcpy_memset"] = sum(1 for c in cats if c.lower() in ("gpu_memcpy", "gpu_memset"))
    except Exception as e:  # noqa: BLE001
        result["trace_error"] = repr(e)
    finally:
        if path:
            try:
                os.unlink(path)
            except OSError:
                pass
    try:
        dev_events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        result["kernels_events"] = sum(
            1 for e in dev_events if not e.name.lower().startswith(("memcpy", "memset"))
        )
    except Exception as e:  # noqa: BLE001
        result["events_error"] = repr(e)
    return result


# --------------------------------------------------------------------------------------------
# torch.compile (--mode compile): one compiled forward for every batch size
# --------------------------------------------------------------------------------------------


def dynamo_graph_count() -> int | None:
    """Graphs Dynamo has compiled in this process (its own counter), None where this torch has
    none. A recompile shows up as one more graph."""
    try:
        from torch._dynamo.utils import counters
    except Exception:  # noqa: BLE001
        return None
    return int(counters["stats"]["unique_graphs"])


def dynamo_graph_breaks() -> dict[str, int]:
    try:
        from torch._dynamo.utils import counters
    except Exception:  # noqa: BLE001
        return {}
    return {str(k)[:200]: int(v) for k, v in counters["graph_break"].items()}


def skip_guards_filter():
    """vLLM's guard filter: it compiles the forward once with a symbolic batch and drops every
    Dynamo guard (it dispatches sizes itself), so batch 1 reuses the general graph instead of
    compiling one specialized to 1 (Dynamo guards `size != 1` on the cache write otherwise)."""
    return getattr(torch.compiler, "skip_all_guards_unsafe", None) or (lambda entries: [False for _ in entries])


def compile_forward(model: Decoder, guards: str, backend: str = "inductor"):
    """model.forward under torch.compile: Inductor in its default mode (no "reduce-overhead":
    the CUDA graphs are captured here, as vLLM captures its own), not fullgraph, so a graph
    break would show in the counters instead of failing the run."""
    options = {"guard_filter_fn": skip_guards_filter()} if guards == "skip" and backend == "inductor" else None
    return torch.compile(model.forward, backend=backend, mode=None, fullgraph=False, options=options)


def mark_batch_dynamic(*tensors: torch.Tensor) -> None:
    """The batch dimension symbolic at the first compiled call (vLLM marks its dummy run's
    inputs the same way); later calls need no mark."""
    for t in tensors:
        torch._dynamo.mark_dynamic(t, 0)


def compile_probe_sizes(sizes: list[int]) -> list[int]:
    """Largest first (the general graph, as vLLM traces at its largest size), then the smallest
    (the size Dynamo specializes), then a middle one: no compilation left after these."""
    ordered = sorted(sizes)
    probes = [ordered[-1], ordered[0], ordered[len(ordered) // 2]]
    return list(dict.fromkeys(probes))


def run_compile_phase(compiled, static_tokens, static_pos, sizes: list[int], sync) -> dict:
    """The first compiled calls, timed until a call compiles nothing more. compile_s ends with
    the last call that compiled a graph (its run and synchronize included: the first call also
    initializes cuBLAS and autotunes Triton kernels with several configs)."""
    calls = []
    t0 = time.perf_counter()
    compile_end = None
    first_graphs = None
    for i, n in enumerate(compile_probe_sizes(sizes)):
        tok, pos = static_tokens[:n], static_pos[:n]
        if i == 0:
            mark_batch_dynamic(tok, pos)
        before = dynamo_graph_count()
        t = time.perf_counter()
        compiled(tok, pos)
        sync()
        now = time.perf_counter()
        after = dynamo_graph_count()
        new_graphs = None if before is None or after is None else after - before
        if i == 0:
            first_graphs = after
        if i == 0 or new_graphs:
            compile_end = now
        calls.append({"size": n, "s": now - t, "graphs_compiled": new_graphs})
    return {"compile_s": compile_end - t0, "calls": calls, "graphs_after_first_call": first_graphs}


# --------------------------------------------------------------------------------------------
# CUDA: the run of one mode
# --------------------------------------------------------------------------------------------

VLLM_STYLE = ("vllm", "compile")  # modes that capture with gc frozen and no per-graph cleanup


def progress(message: str) -> None:
    """A line on stderr per phase: a run cut short by a time limit still says how far it got."""
    print(f"peer_torch [{time.perf_counter() - SCRIPT_START:6.1f} s]: {message}", file=sys.stderr, flush=True)


def init_cuda(dev: torch.device) -> float:
    t = time.perf_counter()
    torch.cuda.init()
    torch.zeros(1, device=dev)
    torch.cuda.synchronize()
    return time.perf_counter() - t


def cuda_versions(props) -> dict:
    versions = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "gpu": props.name,
        "sm": f"{props.major}.{props.minor}",
        "gpu_memory_bytes": props.total_memory,
    }
    try:
        v = int(torch._C._cuda_getDriverVersion())  # e.g. 13000: the driver's CUDA version
        versions["driver_cuda"] = f"{v // 1000}.{v % 1000 // 10}"
    except Exception:  # noqa: BLE001
        pass
    return versions


def reclaim_before_graph(mode: str) -> float:
    """gc mode: what vLLM and PyTorch did before each graph before their fixes."""
    if mode != "gc":
        return 0.0
    t = time.perf_counter()
    gc.collect()
    torch.cuda.empty_cache()
    return time.perf_counter() - t


def capture_all(forward, static_tokens, static_pos, sizes: list[int], mode: str, outputs_kind: str, pool) -> dict:
    """One graph per size in one pool, largest first, one eager warm-up per size before its
    capture. Returns {graphs, outputs, per_size, capture_s, ready_at}."""
    graphs: dict[int, torch.cuda.CUDAGraph] = {}
    outputs: dict[int, torch.Tensor] = {}
    per_size = []
    frozen = mode in VLLM_STYLE
    if frozen:
        gc.collect()
        gc.freeze()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for size in sorted(sizes, reverse=True):
        reclaim_s = reclaim_before_graph(mode)
        tok, pos = static_tokens[:size], static_pos[:size]
        t = time.perf_counter()
        forward(tok, pos)  # warm-up, eager (compiled code without a graph in compile mode)
        torch.cuda.synchronize()  # torch.cuda.graph's __enter__ synchronizes anyway
        warmup_s = time.perf_counter() - t
        g = torch.cuda.CUDAGraph()
        t = time.perf_counter()
        with ExitStack() as stack:
            if frozen:
                stack.enter_context(vllm_capture_patches())
            with torch.cuda.graph(g, pool=pool):
                out = forward(tok, pos)
        graph_s = time.perf_counter() - t
        graphs[size] = g
        outputs[size] = weak_alias(out) if outputs_kind == "weak" else out
        del out
        per_size.append({"size": size, "warmup_s": warmup_s, "graph_s": graph_s, "reclaim_s": reclaim_s})
    torch.cuda.synchronize()
    capture_s = time.perf_counter() - t0
    ready_at = time.perf_counter()
    if frozen:
        gc.unfreeze()
    return {"graphs": graphs, "outputs": outputs, "per_size": per_size, "capture_s": capture_s, "ready_at": ready_at}


def pool_memory(before: dict, pool) -> tuple[dict, int, str]:
    """(memory dict, pool bytes, which figure the pool bytes are) after all graphs exist."""
    after = mem_state()
    torch.cuda.empty_cache()
    after_empty = mem_state()
    segs = pool_segment_bytes(pool)
    memory = {
        "allocated_before": before["allocated"],
        "reserved_before": before["reserved"],
        "reserved_bytes_all_current_before": before["reserved_bytes_all_current"],
        "allocated_after": after["allocated"],
        "reserved_after": after["reserved"],
        "reserved_bytes_all_current_after": after["reserved_bytes_all_current"],
        "reserved_after_empty_cache": after_empty["reserved"],
        "allocated_delta": after["allocated"] - before["allocated"],
        "reserved_delta": after["reserved"] - before["reserved"],
        "reserved_delta_after_empty_cache": after_empty["reserved"] - before["reserved"],
        "pool_segments_bytes": segs,
        "driver_used_delta": after_empty["driver_used"] - before["driver_used"],
    }
    if segs is not None and segs > 0:
        return memory, segs, "pool_segments_bytes"
    return memory, memory["reserved_delta_after_empty_cache"], "reserved_delta_after_empty_cache"


@dataclass
class Eager:
    """The forward without a graph. stage(tokens, positions) prepares its arguments outside the
    timer; call(*staged) is what gets timed. Plain modes call model.forward on the inputs as they
    are; compile mode copies them into the static buffers first, so every compiled call sees the
    aligned, offset-0 inputs its graph was compiled for (no misaligned-input copy)."""

    stage: object
    call: object
    reference: object = None  # compile mode: the uncompiled model.forward, for a second error figure


def plain_eager(model: Decoder) -> Eager:
    return Eager(stage=lambda a, b: (a, b), call=model.forward)


def compiled_eager(model: Decoder, compiled, static_tokens, static_pos) -> Eager:
    def stage(a, b):
        n = a.shape[0]
        st, sp = static_tokens[:n], static_pos[:n]
        st.copy_(a)
        sp.copy_(b)
        return st, sp

    return Eager(stage=stage, call=compiled, reference=model.forward)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x - ref).norm() / ref.norm()).item()


def time_batch(n: int, g, out, static_tokens, static_pos, eager: Eager, tok, pos, iters: int, warm: int) -> dict:
    """Replay and eager figures of one batch size. tok, pos: [warm + 4 * iters, n] fresh random
    inputs, a new row for every iteration."""
    st, sp = static_tokens[:n], static_pos[:n]
    torch.cuda.synchronize()
    result: dict = {}

    # Correctness: graph vs eager on the same inputs (same cache writes).
    st.copy_(tok[0])
    sp.copy_(pos[0])
    g.replay()
    graph_out = out.float().clone()
    result["rel_err"] = rel_err(graph_out, eager.call(*eager.stage(tok[0], pos[0])).float())
    if eager.reference is not None:
        result["rel_err_uncompiled"] = rel_err(graph_out, eager.reference(tok[0], pos[0]).float())
    del graph_out

    for i in range(warm):
        st.copy_(tok[i])
        sp.copy_(pos[i])
        g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ev, wall, run, host = [], [], [], []
    for i in range(iters):
        st.copy_(tok[warm + i])
        sp.copy_(pos[warm + i])
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        ev.append(start.elapsed_time(end) * 1e-3)
    for i in range(iters):
        st.copy_(tok[warm + iters + i])
        sp.copy_(pos[warm + iters + i])
        torch.cuda.synchronize()
        t = time.perf_counter()
        g.replay()
        torch.cuda.synchronize()
        wall.append(time.perf_counter() - t)
    for i in range(iters):
        a, b = tok[warm + 2 * iters + i], pos[warm + 2 * iters + i]
        torch.cuda.synchronize()
        t = time.perf_counter()
        st.copy_(a)
        sp.copy_(b)
        g.replay()
        torch.cuda.synchronize()
        run.append(time.perf_counter() - t)
    for i in range(iters):
        a, b = tok[warm + 3 * iters + i], pos[warm + 3 * iters + i]
        torch.cuda.synchronize()
        t = time.perf_counter()
        st.copy_(a)
        sp.copy_(b)
        g.replay()
        host.append(time.perf_counter() - t)
    torch.cuda.synchronize()
    result["replay_events"] = median_us(ev)
    result["replay_wall"] = median_us(wall)
    result["run_wall"] = median_us(run)
    result["host"] = median_us(host)

    # Eager: the forward on the inputs, synchronized (staging outside the timer).
    for i in range(min(warm, 5)):
        eager.call(*eager.stage(tok[i], pos[i]))
    torch.cuda.synchronize()
    samples = []
    for i in range(iters):
        staged = eager.stage(tok[warm + i], pos[warm + i])
        torch.cuda.synchronize()
        t = time.perf_counter()
        eager.call(*staged)
        torch.cuda.synchronize()
        samples.append(time.perf_counter() - t)
    result["eager"] = median_us(samples)
    return result


def count_forward_kernels(eager: Eager, graphs, static_tokens, static_pos, sizes, fresh) -> dict:
    """Kernels of one eager forward at n = 1 and 256 (compile mode: one compiled call without a
    graph) and of one replay of the smallest graph, from torch.profiler."""
    by_size, info = {}, {}
    for n in [m for m in (1, 256) if m in sizes]:
        tok, pos = fresh(n, 1)
        eager.call(*eager.stage(tok[0], pos[0]))  # warm
        staged = eager.stage(tok[0], pos[0])
        info[str(n)] = count_kernels(partial(eager.call, *staged))
        by_size[str(n)] = info[str(n)].get("kernels") or info[str(n)].get("kernels_events")
    smallest = min(sizes)
    tok, pos = fresh(smallest, 1)
    static_tokens[:smallest].copy_(tok[0])
    static_pos[:smallest].copy_(pos[0])
    replay_info = count_kernels(lambda: graphs[smallest].replay())
    return {"by_size": by_size, "info": info, "replay": replay_info}


def run_cuda(args) -> dict:
    cfg = Config.tiny() if args.tiny else Config.qwen3_0_6b_shaped()
    sizes = args.sizes
    batches = [b for b in args.batches if b in sizes]
    dev = torch.device("cuda")
    compile_mode = args.mode == "compile"

    cuda_init_s = init_cuda(dev)
    props = torch.cuda.get_device_properties(0)

    t = time.perf_counter()
    model = Decoder(cfg, dev, "hf" if args.peer == "strong" else args.kv_layout, seed=0, peer=args.peer)
    max_size = max(sizes)
    static_tokens = torch.zeros(max_size, dtype=torch.int32, device=dev)  # vLLM's persistent buffers
    static_pos = torch.zeros(max_size, dtype=torch.int32, device=dev)
    torch.cuda.synchronize()
    weights_s = time.perf_counter() - t

    compile_info = None
    first_forward_s = None
    if compile_mode:
        # The compile's first call replaces the eager first forward (it initializes cuBLAS too):
        # start-up pays it once, inside compile_s.
        compiled = compile_forward(model, args.compile_guards)
        compile_info = run_compile_phase(compiled, static_tokens, static_pos, sizes, torch.cuda.synchronize)
        progress(f"compiled in {compile_info['compile_s']:.1f} s, graphs {dynamo_graph_count()}, "
                 f"graph breaks {sum(dynamo_graph_breaks().values())}")
        forward = compiled
        eager = compiled_eager(model, compiled, static_tokens, static_pos)
    else:
        # One eager forward before capture (cuBLAS handle and workspace, first kernel loads), like
        # decode_bench's first eager forward, which is not part of its capture time either.
        t = time.perf_counter()
        model.forward(static_tokens[:1], static_pos[:1])
        torch.cuda.synchronize()
        first_forward_s = time.perf_counter() - t
        forward = model.forward
        eager = plain_eager(model)
    graphs_after_compile = dynamo_graph_count()

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.synchronize()
    before = mem_state()

    # ---- capture, the way vLLM does it ----
    pool = torch.cuda.graph_pool_handle()
    cap = capture_all(forward, static_tokens, static_pos, sizes, args.mode, args.outputs, pool)
    total_s = cap["ready_at"] - SCRIPT_START
    progress(f"captured {len(sizes)} sizes in {cap['capture_s']:.3f} s; ready {total_s:.1f} s after start")
    graphs_after_capture = dynamo_graph_count()
    memory, pool_bytes, pool_src = pool_memory(before, pool)

    # ---- replay and eager latency, fresh random inputs every iteration ----
    iters, warm = args.iters, args.warmup
    gen = torch.Generator(device=dev)
    gen.manual_seed(0x5EED)

    def fresh(n, count):
        tok = torch.randint(0, cfg.vocab, (count, n), generator=gen, device=dev, dtype=torch.int32)
        pos = torch.randint(0, cfg.cache_tokens, (count, n), generator=gen, device=dev, dtype=torch.int32)
        return tok, pos

    timed = {}
    for n in batches:
        tok, pos = fresh(n, warm + 4 * iters)
        timed[str(n)] = time_batch(n, cap["graphs"][n], cap["outputs"][n], static_tokens, static_pos,
                                   eager, tok, pos, iters, warm)
        del tok, pos
        progress(f"b = {n}: replay {timed[str(n)]['replay_wall']:.1f} µs, eager {timed[str(n)]['eager']:.1f} µs")

    kernels = count_forward_kernels(eager, cap["graphs"], static_tokens, static_pos, sizes, fresh)
    graphs_at_end = dynamo_graph_count()

    def figure(key):
        return {n: r[key] for n, r in timed.items()}

    per_size = cap["per_size"]
    k1 = kernels["info"].get("1", {})
    startup = {
        "import_s": IMPORT_S,
        "cuda_init_s": cuda_init_s,
        "weights_s": weights_s,
        "first_forward_s": first_forward_s,
        "capture_s": cap["capture_s"],
        "total_s": total_s,
    }
    result = {
        "schema": "peer_torch/1",
        "mode": args.mode,
        "kv_layout": model.kv_layout,
        "peer": args.peer,
        "outputs": args.outputs,
        "tiny": bool(args.tiny),
        "config": asdict(cfg),
        "sizes": sizes,
        "batches": batches,
        "device": props.name,
        "versions": cuda_versions(props),
        "startup": startup,
        "capture_s": cap["capture_s"],
        "capture_parts": {
            "warmup_s": sum(p["warmup_s"] for p in per_size),
            "graph_s": sum(p["graph_s"] for p in per_size),
            "reclaim_s": sum(p["reclaim_s"] for p in per_size),
        },
        "capture_per_size": per_size,
        "memory": memory,
        "pool_bytes": pool_bytes,
        "pool_bytes_source": pool_src,
        "replay_us_events": figure("replay_events"),
        "replay_us_wall": figure("replay_wall"),
        "run_us_wall": figure("run_wall"),
        "replay_host_us": figure("host"),
        "eager_us": figure("eager"),
        "replay_vs_eager_rel_err": figure("rel_err"),
        "kernels_per_forward": kernels["by_size"].get("1"),
        "kernels_per_forward_by_size": kernels["by_size"],
        "kernels_per_forward_events": k1.get("kernels_events"),
        "memcpy_memset_per_forward": k1.get("memcpy_memset"),
        "kernels_per_replay": kernels["replay"].get("kernels") or kernels["replay"].get("kernels_events"),
        "kernel_count_detail": {"eager": kernels["info"], "replay_n1": kernels["replay"]},
        "iters": iters,
        "warmup": warm,
    }
    if compile_mode:
        startup["compile_s"] = compile_info["compile_s"]
        result["compile_s"] = compile_info["compile_s"]
        result["replay_vs_uncompiled_eager_rel_err"] = figure("rel_err_uncompiled")
        result["compile"] = compile_summary(args, compile_info, graphs_after_compile, graphs_after_capture, graphs_at_end)
        result["recompiles"] = result["compile"]["recompiles"]
    return result


def compile_summary(args, info: dict, after_compile, after_capture, at_end) -> dict:
    """What was compiled and how often. recompiles: graphs compiled after the first call (0
    when one compiled graph served every size)."""
    first = info["graphs_after_first_call"]

    def delta(a, b):
        return None if a is None or b is None else a - b

    return {
        "backend": "inductor",
        "mode": "default",
        "fullgraph": False,
        "dynamic": "torch._dynamo.mark_dynamic(batch dim) at the first call (largest size)",
        "guards": "skipped (guard_filter_fn = skip_all_guards_unsafe, as vLLM)" if args.compile_guards == "skip" else "Dynamo's",
        "inductor_cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
        "cold_cache": COMPILE_CACHE_DIR is not None,
        "compile_s": info["compile_s"],
        "calls": info["calls"],
        "graphs_compiled": at_end,
        "graphs_after_first_call": first,
        "recompiles": delta(at_end, first),
        "recompiles_by_phase": {
            "compile": delta(after_compile, first),
            "capture": delta(after_capture, after_compile),
            "timing_and_profiling": delta(at_end, after_capture),
        },
        "graph_breaks": sum(dynamo_graph_breaks().values()),
        "graph_break_reasons": dict(list(dynamo_graph_breaks().items())[:5]),
    }


def parse_sizes(text: str) -> list[int]:
    """'default' (the 35 sizes) or a comma list such as '1,2,4,8' (quick runs)."""
    if text.strip() == "default":
        return list(SIZES)
    sizes = sorted({int(x) for x in text.split(",") if x.strip()})
    if not sizes or sizes[0] < 1:
        raise ValueError("sizes must be positive integers")
    return sizes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=["default", "gc", "vllm", "compile"], default="default")
    p.add_argument("--device", choices=["cuda", "cpu", "meta"], default="cuda",
                   help="cpu/meta: run the checks (shapes, capturability, numerics), no timing")
    p.add_argument("--tiny", action="store_true", help="LlamaConfig::tiny() shapes (2 layers, hidden 256)")
    p.add_argument("--kv-layout", choices=["thd", "hf"], default="thd",
                   help="thd: our [slots, T, hkv, d] (default); hf: [slots, hkv, T, d]")
    p.add_argument("--peer", choices=["plain", "strong"], default="plain",
                   help="plain: the decoder as first written (Hugging Face's norm, matmul attention); "
                        "strong: F.rms_norm, RoPE on the fused q/k, F.scaled_dot_product_attention over "
                        "a grouped view of the queries (issue 29), cache layout hf")
    p.add_argument("--outputs", choices=["weak", "strong"], default="weak",
                   help="keep graph outputs as non-owning aliases (vLLM) or strong references")
    p.add_argument("--sizes", default="default",
                   help="captured sizes: 'default' (the 35 sizes 1, 2, 4, 8..=256 step 8) or a comma list")
    p.add_argument("--compile-guards", choices=["skip", "keep"], default="skip",
                   help="compile mode: skip Dynamo's guards as vLLM does (one graph for every size), "
                        "or keep them (batch 1 then compiles a second graph)")
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batches", default=",".join(map(str, BATCHES)),
                   help="sizes to time (each must be a captured size)")
    p.add_argument("--out", help="write the JSON here instead of stdout")
    args = p.parse_args()
    args.batches = [int(x) for x in args.batches.split(",") if x.strip()]
    try:
        args.sizes = parse_sizes(args.sizes)
    except ValueError as e:
        p.error(f"--sizes: {e}")
    if args.iters < 1 or args.warmup < 1:
        p.error("--iters and --warmup must be at least 1")

    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("peer_torch: CUDA is not available; use --device cpu for the checks", file=sys.stderr)
            return 1
        result = run_cuda(args)
        ok = True
    else:
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
        result = {
            "schema": "peer_torch/1",
            "device": args.device,
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
            "config": asdict(Config.tiny()),
            "selftest": selftest(args),
        }
        ok = result["selftest"]["ok"]
        result["ok"] = ok

    text = json.dumps(result, indent=2, sort_keys=False)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")
        print(f"peer_torch: wrote {args.out}", file=sys.stderr)
    else:
        print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
