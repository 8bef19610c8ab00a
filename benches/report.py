#!/usr/bin/env python3
"""Merges the benchmark JSONs of one GPU run and judges the targets of issues 15 and 5.

  python3 benches/report.py --ours ours.json [--ours-second ours_second.json] \
      --floor floor.json --torch-compile torch_compile.json --torch-default torch_default.json \
      [--torch-gc torch_gc.json] [--torch-extra torch_vllm.json ...] [--device-txt device.txt] \
      --results-dir bench/results --readme bench/README.md
  python3 benches/report.py --self-test      (synthetic JSONs in a temporary folder; no GPU)

Any input may be missing or lack keys: its figures show as "—" and its targets as "not measured"
(never a pass).

Issue 15 (first table): every figure is a ratio of two numbers measured in one run, or a bound:
  first capture, fresh process (ours capture_s) ≤ 1.3x the driver floor of the same node count;
  second process (ours_second capture_s) ≤ 1.1x that floor; replay b = 1 ≤ 2.5x the memory floor
  (ours memory_floor_us, a kernel streaming step_bytes, the b = 1 decode step's bytes); replay at
  b = 1, 8, 64, 256 ≤ 0.7x the torch.compile peer's replay; second start ≤ 0.6 s to ready;
  kernels per forward ≤ 150; one run() ≤ 5 µs on the host; cost growth: per-graph capture time
  of 67 and 512 sizes ≤ 1.25x that of 35 sizes, and every growth row's pool ≤ 1.05x its largest
  graph (one pool shared by all graphs).
Issue 5 (below it): against the PyTorch default peer, as before.

Inputs (keys read; everything else is carried into the merged JSON untouched):
  --ours        decode_bench --json: device, graphs, capture_s, capture_parts {warmup, record,
                instantiate, upload}, pool_bytes, replay_us {"1","8","64","256"}, eager_us {...},
                run_host_us (a number, or {"1": ...}), kernels_per_forward (or nodes), startup
                {context_s, compile_s, weights_s, capture_s, total_s, modules_compiled (or
                kernels_compiled)}, startup_second {same}, capture_reclaim_each_s,
                capture_reclaim_once_s, capture_lazy_build_s, capture_lazy_first_call_us,
                capture_lazy_second_call_us, recapture_s, refresh_s, refresh_in_place,
                memory_floor_us, step_bytes, growth [{sizes, largest, capture_s, per_graph_ms,
                pool_bytes, largest_graph_bytes}] (rows of 35, 67 and 512 sizes)
  --ours-second decode_bench --json of a second process (warm kernel cache): capture_s,
                kernels_per_forward, and its `startup` (the second start; ours' startup_second
                when this file has none)
  --floor       driver_floor --json: graphs, nodes, capture_s, record_s, instantiate_s, upload_s
  --torch-*     benches/peer_torch.py output (see the keys documented at the top of that file);
                --torch-compile is its compile mode (the issue 15 peer), --torch-default its
                default mode (the issue 5 peer)
  --device-txt  nvidia-smi's "name, driver_version, memory.total" line (scripts/bench.sh writes it)

Outputs:
  <results-dir>/<gpu-name-slug>.json   {schema, date, gpu, slug, git_commit, versions, inputs,
                ours, ours_second, floor, torch {default, gc, compile, <extra labels>},
                targets_issue15 [{id, figure, target, ours, peer, ratio, holds}], summary_issue15
                {targets, held, failed, unknown}, targets, summary (issue 5, the same shape)}
                holds: true, false, or null (not measured)
  --readme      the Markdown tables, written between <!-- results:start --> and
                <!-- results:end --> (the section is appended when the markers are absent)
  stdout        the same Markdown
Ratios are always ours / reference (the peer column), so "≤ 0.7x" reads directly.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile

START = "<!-- results:start -->"
END = "<!-- results:end -->"
BATCHES = ["1", "8", "64", "256"]
# Issue 5.
CAPTURE_SPEEDUP = 10.0  # ours >= 10x faster than PyTorch default
FLOOR_RATIO = 1.3  # ours <= 1.3x the driver floor
REPLAY_RATIO = 0.6  # ours <= 0.6x PyTorch's replay
HOST_US = 10.0  # one run() <= 10 µs on the host
COMPILE_NONE_S = 0.05  # "compiles no kernel" when no count is given: compile_s below this
# Issue 15.
FIRST_CAPTURE_FLOOR = 1.3  # first capture in a fresh process <= 1.3x the driver floor
SECOND_CAPTURE_FLOOR = 1.1  # capture in a second process <= 1.1x the driver floor
MEMORY_FLOOR_RATIO = 2.5  # replay b = 1 <= 2.5x the memory floor
REPLAY_VS_COMPILE = 0.7  # replay <= 0.7x the torch.compile peer's
STARTUP_SECOND_S = 0.6  # second start to ready <= 0.6 s
KERNELS_MAX = 150  # kernels per forward at b = 1
HOST_US_15 = 5.0  # one run() <= 5 µs on the host
GROWTH_RATIO = 1.25  # per-graph capture time of 67 / 512 sizes <= 1.25x that of 35
POOL_SHARED_RATIO = 1.05  # pool <= 1.05x the largest graph (one pool shared)
GROWTH_ROWS = (
    (35, "35 sizes (1, 2, 4, 8..=256 step 8)"),
    (67, "67 sizes (1, 2, 4, 8..=512 step 8)"),
    (512, "512 sizes (1..=512)"),
)
# Issue 29.
SERVE_FIRST_S = 0.35  # second start: main() to the first served forward, background capture
SERVE_LIVE_S = 0.6  # second start: main() to all 35 graphs live
FIRST_CAPTURE_FLOOR_29 = 2.0  # first capture in a fresh process <= 2x the driver floor
STAGED_HOST_US = 3.0  # host time of a staged run
HOST_US_29 = 5.0  # host time of run()
REPLAY_VS_STRONG = 0.8  # replay <= 0.8x the strong torch.compile peer's
NOT_MEASURED = "not measured"


def load(path: str | None, what: str) -> dict:
    if not path:
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except (OSError, ValueError) as e:
        print(f"report: {what} ({path}) unusable: {e}", file=sys.stderr)
        return {}


def get(d: dict, *path, default=None):
    """d[path[0]][path[1]]...; integer keys also match their string form."""
    cur = d
    for key in path:
        if isinstance(cur, dict):
            if key in cur:
                cur = cur[key]
            elif str(key) in cur:
                cur = cur[str(key)]
            else:
                return default
        else:
            return default
    return cur


def num(v) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def per_size(v, size: str = "1") -> float | None:
    """A scalar, or a {size: value} dict's entry."""
    if isinstance(v, dict):
        return num(get(v, size))
    return num(v)


def slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return s or "unknown-gpu"


# ---- formatting ----
DASH = "—"


def f_s(v) -> str:
    v = num(v)
    if v is None:
        return DASH
    return f"{v:.3f} s" if v < 100 else f"{v:.1f} s"


def f_us(v) -> str:
    v = num(v)
    if v is None:
        return DASH
    return f"{v:.1f} µs" if v < 10_000 else f"{v / 1000:.2f} ms"


def f_bytes(v) -> str:
    v = num(v)
    if v is None:
        return DASH
    return f"{v / (1 << 20):.1f} MiB"


def f_ms(v) -> str:
    v = num(v)
    return DASH if v is None else f"{v:.2f} ms"


def f_gb(v) -> str:
    v = num(v)
    return DASH if v is None else f"{v / 1e9:.3f} GB"


def f_int(v) -> str:
    v = num(v)
    return DASH if v is None else f"{int(v)}"


def f_ratio(v) -> str:
    return DASH if v is None else (f"{v:.3f}x" if v < 0.1 else f"{v:.2f}x")


def ratio(a, b) -> float | None:
    a, b = num(a), num(b)
    if a is None or b is None or b == 0:
        return None
    return a / b


def at_most(v, limit: float) -> bool | None:
    """v <= limit, None (not measured) when v is missing."""
    v = num(v)
    return None if v is None else v <= limit


def verdict(ok: bool | None) -> str:
    return NOT_MEASURED if ok is None else ("yes" if ok else "**no**")


def as_dict(v) -> dict:
    return v if isinstance(v, dict) else {}


def startup_second(ours: dict, second: dict) -> dict:
    """The second start: the second process's own `startup` (measured there), else what ours
    recorded as startup_second."""
    s = get(second, "startup")
    if isinstance(s, dict) and s:
        return s
    return as_dict(get(ours, "startup_second"))


def target_row(figure, target, o, p, r, holds, fmt_o, fmt_p, row_id=None) -> dict:
    """One judged figure; keys starting with "_" are the formatted cells (not in the JSON)."""
    row = {
        "figure": figure,
        "target": target,
        "ours": num(o) if not isinstance(o, str) else o,
        "peer": num(p) if not isinstance(p, str) else p,
        "ratio": r,
        "holds": holds,
        "_ours": fmt_o(o),
        "_peer": fmt_p(p),
    }
    if row_id:
        row = {"id": row_id, **row}
    return row


def summarize(rows: list[dict]) -> dict:
    held = sum(1 for r in rows if r["holds"] is True)
    failed = sum(1 for r in rows if r["holds"] is False)
    return {"targets": len(rows), "held": held, "failed": failed, "unknown": len(rows) - held - failed}


# ---- issue 15 ----


def kernel_nodes(d: dict):
    return get(d, "kernels_per_forward", default=get(d, "nodes"))


def floor_mismatch(ours: dict, floor: dict) -> str | None:
    """Why floor.json is not the floor of these graphs (another node or graph count), None when
    it is or when a count is missing (bench.sh passes our node count to driver_floor)."""
    for what, o, f in (("node", kernel_nodes(ours), get(floor, "nodes")), ("graph", get(ours, "graphs"), get(floor, "graphs"))):
        o, f = num(o), num(f)
        if o is not None and f is not None and o != f:
            return f"{what} counts differ (ours {int(o)}, floor {int(f)})"
    return None


def floor_rows(ours: dict, second: dict, floor: dict) -> list[dict]:
    shape = f"{f_int(get(floor, 'graphs', default=35))} graphs x {f_int(get(floor, 'nodes'))} kernel nodes"
    p = get(floor, "capture_s")
    rows = []
    for row_id, label, src, limit in (
        ("capture_first", "first capture, fresh process (35 sizes, nothing on disk)", ours, FIRST_CAPTURE_FLOOR),
        ("capture_second", "capture in a second process", second, SECOND_CAPTURE_FLOOR),
    ):
        o = get(src, "capture_s")
        r = ratio(o, p)
        # The second process captures the same graphs: its own count when it wrote one.
        mismatch = floor_mismatch(src if kernel_nodes(src) is not None else ours, floor)
        figure = label + (f" — not comparable: {mismatch}" if mismatch else "")
        holds = None if mismatch else at_most(r, limit)
        rows.append(target_row(figure, f"≤ {limit:g}x the driver floor ({shape})", o, p, r, holds, f_s, f_s, row_id))
    return rows


def memory_floor_row(ours: dict) -> dict:
    o, mf, step = get(ours, "replay_us", "1"), get(ours, "memory_floor_us"), get(ours, "step_bytes")
    r = ratio(o, mf)
    peer_text = f_us(mf) + (f" (memory floor: {f_gb(step)} streamed)" if num(mf) is not None else "")
    return target_row(
        "replay latency, b = 1, vs the memory floor (a kernel streaming the decode step's bytes)",
        f"≤ {MEMORY_FLOOR_RATIO:g}x the memory floor",
        o, peer_text, r, at_most(r, MEMORY_FLOOR_RATIO), f_us, str, "replay_b1_memory_floor",
    )


def compile_replay_rows(ours: dict, tcomp: dict, peer_replay_key: str) -> list[dict]:
    rows = []
    for b in BATCHES:
        o, p = get(ours, "replay_us", b), get(tcomp, peer_replay_key, b)
        r = ratio(o, p)
        rows.append(target_row(
            f"replay latency, b = {b}, vs the torch.compile peer",
            f"≤ {REPLAY_VS_COMPILE:g}x torch.compile's replay",
            o, p, r, at_most(r, REPLAY_VS_COMPILE), f_us, f_us, f"replay_b{b}_vs_compile",
        ))
    return rows


def growth_row(ours: dict, count: int) -> dict:
    """The growth entry of `count` sizes ({} when absent); per_graph_ms from capture_s / sizes
    when only those were written."""
    rows = get(ours, "growth")
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, dict) and num(row.get("sizes")) == count:
            row = dict(row)
            if num(row.get("per_graph_ms")) is None and num(row.get("capture_s")) is not None:
                row["per_graph_ms"] = num(row["capture_s"]) * 1000 / count
            return row
    return {}


def growth_rows(ours: dict) -> list[dict]:
    base = growth_row(ours, GROWTH_ROWS[0][0])
    rows = []
    for count, label in GROWTH_ROWS[1:]:
        o, p = get(growth_row(ours, count), "per_graph_ms"), get(base, "per_graph_ms")
        r = ratio(o, p)
        rows.append(target_row(
            f"cost growth: capture time per graph, {label} (peer: 35 sizes)",
            f"≤ {GROWTH_RATIO:g}x the per-graph time of 35 sizes",
            o, p, r, at_most(r, GROWTH_RATIO), f_ms, f_ms, f"growth_per_graph_{count}",
        ))
    for count, label in GROWTH_ROWS:
        g = growth_row(ours, count)
        o, p = get(g, "pool_bytes"), get(g, "largest_graph_bytes")
        r = ratio(o, p)
        rows.append(target_row(
            f"one pool shared, {label}: pool vs the largest graph alone",
            f"≤ {POOL_SHARED_RATIO:g}x the largest graph's bytes",
            o, p, r, at_most(r, POOL_SHARED_RATIO), f_bytes, f_bytes, f"growth_pool_{count}",
        ))
    return rows


def targets_issue15(ours: dict, second: dict, floor: dict, tcomp: dict, peer_replay_key: str) -> list[dict]:
    rows = floor_rows(ours, second, floor)
    rows.append(memory_floor_row(ours))
    rows += compile_replay_rows(ours, tcomp, peer_replay_key)
    o, p = get(startup_second(ours, second), "total_s"), get(tcomp, "startup", "total_s")
    rows.append(target_row(
        "start-up to ready, second start (peer: the torch.compile peer's start-up, not judged)",
        f"≤ {STARTUP_SECOND_S:g} s", o, p, ratio(o, p), at_most(o, STARTUP_SECOND_S), f_s, f_s, "startup_second",
    ))
    o, p = kernel_nodes(ours), get(tcomp, "kernels_per_forward")
    rows.append(target_row(
        "kernels per forward, b = 1 (peer: torch.compile, not judged)",
        f"≤ {KERNELS_MAX}", o, p, ratio(o, p), at_most(o, KERNELS_MAX), f_int, f_int, "kernels_b1",
    ))
    o, p = per_size(get(ours, "run_host_us")), per_size(get(tcomp, "replay_host_us"))
    rows.append(target_row(
        "host time of one run(), b = 1 (peer: torch.compile's static copies + g.replay(), not judged)",
        f"≤ {HOST_US_15:g} µs", o, p, ratio(o, p), at_most(o, HOST_US_15), f_us, f_us, "run_host_b1",
    ))
    rows += growth_rows(ours)
    return rows


# ---- issue 29 ----


def targets_issue29(ours: dict, floor: dict, serve: dict, tcomp: dict, peer_replay_key: str) -> list[dict]:
    """Issue 29's table: start-up with background capture (decode_bench --serve-start of a
    second process), the first capture against the driver floor, host times, and replay against
    the strong torch.compile peer (a compile peer that is not the strong one is not judged)."""
    rows = []
    s = as_dict(get(serve, "serve_start"))
    for row_id, label, key, limit in (
        ("serve_first_served", "second start: main() to the first served forward, background capture", "first_served_s", SERVE_FIRST_S),
        ("serve_all_live", "second start: main() to all 35 graphs live, background capture", "all_live_s", SERVE_LIVE_S),
    ):
        o = get(s, key)
        holds = at_most(o, limit)
        # "All live" counts only when nothing was left pending (capture_pending has a budget).
        if key == "all_live_s" and holds and num(get(s, "pending", default=0)) != 0:
            holds, label = False, label + f" — {f_int(get(s, 'pending'))} graph(s) still pending"
        rows.append(target_row(label, f"≤ {limit:g} s", o, None, None, holds, f_s, f_s, row_id))
    o, p = get(ours, "capture_s"), get(floor, "capture_s")
    r = ratio(o, p)
    mismatch = floor_mismatch(ours, floor)
    rows.append(target_row(
        "first capture, fresh process, nothing on disk" + (f" — not comparable: {mismatch}" if mismatch else ""),
        f"≤ {FIRST_CAPTURE_FLOOR_29:g}x the driver floor", o, p, r,
        None if mismatch else at_most(r, FIRST_CAPTURE_FLOOR_29), f_s, f_s, "capture_first_29",
    ))
    o = get(ours, "staged_run_host_us")
    rows.append(target_row("host time of a staged run, b = 1", f"≤ {STAGED_HOST_US:g} µs", o, None, None,
                           at_most(o, STAGED_HOST_US), f_us, f_us, "staged_host_b1"))
    o = per_size(get(ours, "run_host_us"))
    rows.append(target_row("host time of run(), b = 1", f"≤ {HOST_US_29:g} µs", o, None, None,
                           at_most(o, HOST_US_29), f_us, f_us, "run_host_b1_29"))
    strong = get(tcomp, "peer") == "strong"
    for b in BATCHES:
        o, p = get(ours, "replay_us", b), get(tcomp, peer_replay_key, b) if strong else None
        r = ratio(o, p)
        rows.append(target_row(
            f"replay latency, b = {b}, vs the strong torch.compile peer"
            + ("" if strong or not tcomp else " — the compile peer given is not the strong one"),
            f"≤ {REPLAY_VS_STRONG:g}x its replay", o, p, r, at_most(r, REPLAY_VS_STRONG), f_us, f_us,
            f"replay_b{b}_vs_strong",
        ))
    return rows


# ---- issue 5 ----


def compiled_nothing(s: dict) -> bool | None:
    for key in ("kernels_compiled", "compiled_kernels", "modules_compiled"):
        if num(get(s, key)) is not None:
            return num(get(s, key)) == 0
    c = num(get(s, "compile_s"))
    return None if c is None else c < COMPILE_NONE_S


def targets(ours: dict, second: dict, floor: dict, tdef: dict, peer_replay_key: str) -> list[dict]:
    rows: list[dict] = []

    def row(*fields):
        rows.append(target_row(*fields))

    # Capture of all 35 sizes vs PyTorch.
    o, p = get(ours, "capture_s"), get(tdef, "capture_s")
    r = ratio(o, p)
    row(
        "capture, all 35 sizes, warm-ups included",
        f"≥ {CAPTURE_SPEEDUP:g}x faster than PyTorch default (ratio ≤ {1 / CAPTURE_SPEEDUP:g})",
        o, p, r, None if r is None else r <= 1 / CAPTURE_SPEEDUP, f_s, f_s,
    )
    # vs the driver floor.
    nodes = get(floor, "nodes")
    p = get(floor, "capture_s")
    r = ratio(o, p)
    row(
        f"capture vs driver floor (peer: {f_int(get(floor, 'graphs', default=35))} graphs x {f_int(nodes)} empty kernel nodes)",
        f"≤ {FLOOR_RATIO:g}x the driver floor",
        o, p, r, None if r is None else r <= FLOOR_RATIO, f_s, f_s,
    )
    # The same two figures for a capture in a warm process (second capture of all sizes, after
    # the first one loaded every kernel lazily): what re-captures and later runners pay.
    o2 = get(ours, "capture_reclaim_once_s")
    if o2 is not None:
        r = ratio(o2, get(tdef, "capture_s"))
        row(
            "capture, all 35 sizes, warm process (second capture; PyTorch's first)",
            f"≥ {CAPTURE_SPEEDUP:g}x faster than PyTorch default (ratio ≤ {1 / CAPTURE_SPEEDUP:g})",
            o2, get(tdef, "capture_s"), r, None if r is None else r <= 1 / CAPTURE_SPEEDUP, f_s, f_s,
        )
        r = ratio(o2, p)
        row(
            "capture vs driver floor, warm process",
            f"≤ {FLOOR_RATIO:g}x the driver floor",
            o2, p, r, None if r is None else r <= FLOOR_RATIO, f_s, f_s,
        )
    # Replay latency.
    for b in BATCHES:
        o, p = get(ours, "replay_us", b), get(tdef, peer_replay_key, b)
        r = ratio(o, p)
        row(
            f"replay latency, b = {b}",
            f"≤ {REPLAY_RATIO:g}x PyTorch's replay",
            o, p, r, None if r is None else r <= REPLAY_RATIO, f_us, f_us,
        )
    # Pool.
    o, p = get(ours, "pool_bytes"), get(tdef, "pool_bytes")
    r = ratio(o, p)
    row("graph pool bytes", "≤ PyTorch's pool", o, p, r, None if r is None else r <= 1.0, f_bytes, f_bytes)
    # Host time of run().
    o = per_size(get(ours, "run_host_us"))
    p = per_size(get(tdef, "replay_host_us"))
    row(
        "host time of one run(), b = 1 (peer: static copies + g.replay())",
        f"≤ {HOST_US:g} µs",
        o, p, ratio(o, p), None if num(o) is None else num(o) <= HOST_US, f_us, f_us,
    )
    # Kernels.
    o = get(ours, "kernels_per_forward", default=get(ours, "nodes"))
    p = get(tdef, "kernels_per_forward")
    r = ratio(o, p)
    row("kernels per forward (b = 1)", "fewer than PyTorch's", o, p, r,
        None if num(o) is None or num(p) is None else num(o) < num(p), f_int, f_int)
    # Start-up.
    s1 = get(ours, "startup") if isinstance(get(ours, "startup"), dict) else {}
    s2 = startup_second(ours, second)
    compiled = next(
        ((k, get(s2, k)) for k in ("kernels_compiled", "compiled_kernels", "modules_compiled") if get(s2, k) is not None),
        None,
    )
    o = f_s(get(s2, "compile_s"))
    if compiled:
        o += f" ({f_int(compiled[1])} {'modules' if compiled[0].startswith('modules') else 'kernels'} compiled)"
    row(
        "second start: kernel compilation",
        f"compiles no kernel (a count of 0, else compile_s < {COMPILE_NONE_S * 1000:g} ms)",
        o, DASH, None, compiled_nothing(s2) if s2 else None, str, str,
    )
    p = get(tdef, "capture_s")
    for label, s in (("first start", s1), ("second start", s2)):
        o = get(s, "total_s")
        r = ratio(o, p)
        row(
            f"start-up to ready, {label} (peer: PyTorch's capture alone)",
            "total ≤ PyTorch's capture time alone",
            o, p, r, None if r is None else r <= 1.0, f_s, f_s,
        )
    return rows


def torch_parts(t: dict) -> str:
    parts = get(t, "capture_parts")
    if not isinstance(parts, dict):
        return DASH
    out = [f"warm-up {f_s(parts.get('warmup_s'))}", f"graph {f_s(parts.get('graph_s'))}"]
    if num(parts.get("reclaim_s")):
        out.append(f"gc+empty_cache {f_s(parts.get('reclaim_s'))}")
    if num(get(t, "compile_s")) is not None:
        out.append(f"torch.compile {f_s(get(t, 'compile_s'))} before it (not in the capture)")
    return ", ".join(out)


def ours_parts(o: dict) -> str:
    parts = get(o, "capture_parts")
    if not isinstance(parts, dict):
        return DASH
    names = ("warmup", "record", "instantiate", "upload")
    got = []
    for n in names:
        v = parts.get(n, parts.get(n + "_s"))
        if v is not None:
            got.append(f"{n} {f_s(v)}")
    return ", ".join(got) or DASH


def torch_label(t: dict, fallback: str) -> str:
    mode = get(t, "mode", default=fallback)
    layout = get(t, "kv_layout", default="thd")
    outputs = get(t, "outputs", default="weak")
    peer = get(t, "peer", default=None)
    label = str(mode)
    if peer == "strong" or (peer == "plain" and mode == "compile"):
        label += f"-{peer}"
    if layout != "thd":
        label += f"-{layout}"
    if outputs != "weak":
        label += f"-{outputs}"
    return label


TORCH_MODE_TEXT = {
    "default": "PyTorch, torch.cuda.graph as shipped",
    "gc": "PyTorch, gc.collect() + empty_cache() before each graph",
    "vllm": "PyTorch, vLLM-style (gc frozen, no gc/empty_cache per graph)",
    "compile": "PyTorch, torch.compile (Inductor, dynamic batch) + vLLM-style capture (the strong "
    "peer since issue 29: F.rms_norm, SDPA over grouped queries, cache [slots, kv_heads, T, d])",
}


def summary_text(label: str, s: dict) -> str:
    return (
        f"{label}: targets held {s['held']} of {s['targets']}"
        + (f" ({s['failed']} missed" if s["failed"] else " (none missed")
        + (f", {s['unknown']} {NOT_MEASURED})" if s["unknown"] else ")")
        + "."
    )


def targets_table(rows: list[dict]) -> list[str]:
    lines = ["| figure | target | ours | peer | ratio | holds? |", "|---|---|---:|---:|---:|:---:|"]
    for r in rows:
        lines.append(
            f"| {r['figure']} | {r['target']} | {r['_ours']} | {r['_peer']} | {f_ratio(r['ratio'])} | {verdict(r['holds'])} |"
        )
    return lines


def growth_section(ours: dict) -> list[str]:
    lines = ["### Cost growth with the number of sizes", ""]
    lines.append("| sizes | largest | capture | per graph | per graph / 35 sizes' | pool | largest graph alone | pool / largest graph |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    base = get(growth_row(ours, GROWTH_ROWS[0][0]), "per_graph_ms")
    for count, label in GROWTH_ROWS:
        g = growth_row(ours, count)
        lines.append(
            f"| {label} | {f_int(g.get('largest'))} | {f_s(g.get('capture_s'))} | {f_ms(g.get('per_graph_ms'))} | "
            f"{f_ratio(ratio(g.get('per_graph_ms'), base))} | {f_bytes(g.get('pool_bytes'))} | "
            f"{f_bytes(g.get('largest_graph_bytes'))} | {f_ratio(ratio(g.get('pool_bytes'), g.get('largest_graph_bytes')))} |"
        )
    return lines


def capture_section(ours: dict, floor: dict, torches: dict) -> list[str]:
    lines = ["### Capture of all 35 sizes", ""]
    lines.append("| capture | wall | / ours | breakdown |")
    lines.append("|---|---:|---:|---|")
    ours_cap = get(ours, "capture_s")
    for label, t in torches.items():
        mode = str(get(t, "mode", default=label))
        text = TORCH_MODE_TEXT.get(mode, f"PyTorch, {mode}")
        notes = []
        if get(t, "kv_layout", default="thd") == "hf":
            notes.append("KV cache [slots, kv_heads, T, d]: no copy before the matmuls")
        if get(t, "outputs", default="weak") == "strong":
            notes.append("graph outputs kept alive")
        if notes:
            text += f" ({'; '.join(notes)})"
        lines.append(f"| {text} | {f_s(get(t, 'capture_s'))} | {f_ratio(ratio(get(t, 'capture_s'), ours_cap))} | {torch_parts(t)} |")
    lines.append(f"| ours, freeze scope (one reclamation) | {f_s(ours_cap)} | {f_ratio(ratio(ours_cap, ours_cap))} | {ours_parts(ours)} |")
    once = get(ours, "capture_reclaim_once_s")
    if once is not None:
        lines.append(f"| ours, freeze scope, measured again after the benchmark | {f_s(once)} | {f_ratio(ratio(once, ours_cap))} | |")
    each = get(ours, "capture_reclaim_each_s")
    lines.append(f"| ours, reclamation after each graph | {f_s(each)} | {f_ratio(ratio(each, ours_cap))} | |")
    fparts = ", ".join(
        f"{k[:-2]} {f_s(get(floor, k))}" for k in ("record_s", "instantiate_s", "upload_s") if get(floor, k) is not None
    )
    lines.append(
        f"| driver floor ({f_int(get(floor, 'graphs', default=35))} graphs x {f_int(get(floor, 'nodes'))} empty kernel nodes) | {f_s(get(floor, 'capture_s'))} | "
        f"{f_ratio(ratio(get(floor, 'capture_s'), ours_cap))} | {fparts or DASH} |"
    )
    lazy = get(ours, "capture_lazy_first_call_us")
    if lazy is not None:
        lines.append("")
        lines.append(
            f"Lazy capture instead: runner ready in {f_s(get(ours, 'capture_lazy_build_s'))}; the first call of a size"
            f" costs {f_us(lazy)} (it captures), the second {f_us(get(ours, 'capture_lazy_second_call_us'))}."
        )
    if get(ours, "refresh_s") is not None:
        lines.append("")
        lines.append(
            f"New weights of the same shapes, all sizes: full re-capture {f_s(get(ours, 'recapture_s'))}, refresh"
            f" (cuGraphExecUpdate) {f_s(get(ours, 'refresh_s'))} ({f_int(get(ours, 'refresh_in_place'))} graphs updated in place)."
        )
    return lines


def host_line(label: str, t: dict, ours: dict) -> list[str]:
    host = get(t, "replay_host_us")
    if not (isinstance(host, dict) and host):
        return []
    return [
        "",
        f"{label} host time of static copies + `g.replay()` (no synchronize): "
        + ", ".join(f"b = {b}: {f_us(host.get(b))}" for b in BATCHES if b in host)
        + f"; ours run(): {f_us(per_size(get(ours, 'run_host_us')))}.",
    ]


def latency_section(ours: dict, tdef: dict, tcomp: dict, peer_replay_key: str) -> list[str]:
    lines = ["### Latency per batch", ""]
    lines.append(
        "| batch | ours eager | ours graph | PyTorch eager | PyTorch replay (events) | PyTorch replay (wall) | "
        "PyTorch copy + replay (wall) | ours graph / PyTorch replay | torch.compile eager | torch.compile replay (wall) | "
        "ours graph / torch.compile replay |"
    )
    lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for b in BATCHES:
        lines.append(
            f"| {b} | {f_us(get(ours, 'eager_us', b))} | {f_us(get(ours, 'replay_us', b))} | "
            f"{f_us(get(tdef, 'eager_us', b))} | {f_us(get(tdef, 'replay_us_events', b))} | "
            f"{f_us(get(tdef, 'replay_us_wall', b))} | {f_us(get(tdef, 'run_us_wall', b))} | "
            f"{f_ratio(ratio(get(ours, 'replay_us', b), get(tdef, peer_replay_key, b)))} | "
            f"{f_us(get(tcomp, 'eager_us', b))} | {f_us(get(tcomp, 'replay_us_wall', b))} | "
            f"{f_ratio(ratio(get(ours, 'replay_us', b), get(tcomp, peer_replay_key, b)))} |"
        )
    lines += host_line("PyTorch default", tdef, ours)
    lines += host_line("torch.compile peer", tcomp, ours)
    if get(ours, "memory_floor_us") is not None:
        lines.append("")
        lines.append(
            f"Memory floor of the b = 1 step (a kernel streaming {f_gb(get(ours, 'step_bytes'))}, same process): "
            f"{f_us(get(ours, 'memory_floor_us'))}."
        )
    return lines


def memory_section(ours: dict, torches: dict) -> list[str]:
    tdef, tgc, tcomp = (torches.get(k, {}) for k in ("default", "gc", "compile"))
    peers = (tdef, tgc, tcomp)
    lines = ["### Memory and kernels", ""]
    lines.append("| | ours | PyTorch default | PyTorch gc | torch.compile |")
    lines.append("|---|---:|---:|---:|---:|")

    def row(label, ours_cell, fmt, *path):
        lines.append(f"| {label} | {ours_cell} | " + " | ".join(fmt(get(t, *path)) for t in peers) + " |")

    row("graph pool", f_bytes(get(ours, "pool_bytes")), f_bytes, "pool_bytes")
    row("reserved delta (PyTorch allocator, after empty_cache)", DASH, f_bytes, "memory", "reserved_delta_after_empty_cache")
    row("device memory delta (cudaMemGetInfo)", f_bytes(get(ours, "driver_used_delta")), f_bytes, "memory", "driver_used_delta")
    row("kernels per forward, b = 1 (torch.compile: one compiled call)", f_int(kernel_nodes(ours)), f_int, "kernels_per_forward")
    row("kernels per forward, b = 256", f_int(get(ours, "kernels_per_forward_by_size", "256")), f_int,
        "kernels_per_forward_by_size", "256")
    row("kernels in one replay, b = 1 (ours: graph nodes)", f_int(get(ours, "nodes", default=get(ours, "kernels_per_forward"))),
        f_int, "kernels_per_replay")
    return lines


def startup_section(merged: dict, tdef: dict, tcomp: dict) -> list[str]:
    ours = merged["ours"]
    lines = ["### Start-up to ready", ""]
    lines.append("| process | context / CUDA init | kernel compile | weights | first forward | capture | total |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for label, s in (("ours, first start", get(ours, "startup")), ("ours, second start (kernel cache warm)", merged["ours_startup_second"])):
        s = as_dict(s)
        lines.append(
            f"| {label} | {f_s(s.get('context_s'))} | {f_s(s.get('compile_s'))} | {f_s(s.get('weights_s'))} | "
            f"{f_s(s.get('first_forward_s'))} | {f_s(s.get('capture_s'))} | {f_s(s.get('total_s'))} |"
        )
    for label, t in (("PyTorch default", tdef), ("torch.compile, cold caches (first forward: inside the compile)", tcomp)):
        st = as_dict(get(t, "startup"))
        if st:
            lines.append(
                f"| {label} (import torch {f_s(st.get('import_s'))}) | {f_s(st.get('cuda_init_s'))} | {f_s(st.get('compile_s'))} | "
                f"{f_s(st.get('weights_s'))} | {f_s(st.get('first_forward_s'))} | {f_s(st.get('capture_s'))} | {f_s(st.get('total_s'))} |"
            )
    return lines


def error_text(errs) -> str:
    if not isinstance(errs, dict):
        return DASH
    return ", ".join(f"b = {k}: {num(x):.1e}" for k, x in errs.items() if num(x) is not None) or DASH


def correctness_section(tdef: dict, tcomp: dict) -> list[str]:
    lines = []
    if isinstance(get(tdef, "replay_vs_eager_rel_err"), dict):
        lines += ["", f"PyTorch graph vs eager relative error: {error_text(get(tdef, 'replay_vs_eager_rel_err'))}."]
    if tcomp:
        c = as_dict(get(tcomp, "compile"))
        lines += [
            "",
            f"torch.compile peer: {f_int(c.get('graphs_compiled'))} graph(s) compiled, {f_int(c.get('recompiles'))} recompiles,"
            f" {f_int(c.get('graph_breaks'))} graph breaks, Dynamo guards {c.get('guards', DASH)}; graph vs compiled call"
            f" relative error: {error_text(get(tcomp, 'replay_vs_eager_rel_err'))}; vs the plain forward:"
            f" {error_text(get(tcomp, 'replay_vs_uncompiled_eager_rel_err'))}.",
        ]
    return lines


def markdown(merged: dict, rows15: list[dict], rows5: list[dict], rows29: list[dict], peer_replay_key: str) -> str:
    ours, floor = merged["ours"], merged["floor"]
    torches: dict = merged["torch"]
    tdef, tcomp = torches.get("default", {}), torches.get("compile", {})
    v = merged["versions"]
    lines = [
        f"Run of {merged['date']} on **{merged['gpu']}**"
        + (f" (driver {v['driver']})" if v.get("driver") else "")
        + (f", CUDA driver API {v['driver_cuda']}" if v.get("driver_cuda") else "")
        + f"; PyTorch {v.get('torch', DASH)} (CUDA {v.get('torch_cuda', DASH)}), Python {v.get('python', DASH)}"
        + (f"; commit `{merged['git_commit'][:12]}`" if merged.get("git_commit") else "")
        + ".",
        summary_text("Issue 15", merged["summary_issue15"]),
        summary_text("Issue 5", merged["summary"]),
        summary_text("Issue 29", merged["summary_issue29"]),
        "",
        "### Targets (issue 29)",
        "",
        "Start-up: `decode_bench --serve-start` in a process that finds the kernel cache and the GEMM"
        " algorithms on disk (bench.sh runs it after two starts). Replay: against the strong torch.compile"
        f" peer (`peer_torch.py --peer strong`; its replay is `{peer_replay_key}`).",
        "",
    ]
    lines += targets_table(rows29)
    lines += [
        "",
        "### Targets (issue 15)",
        "",
        "Each ratio is two figures of one run, ours / peer. Peers: the driver floor of our node count, the memory"
        " floor of the b = 1 step (measured in our process), the torch.compile peer (Inductor, dynamic batch,"
        f" its own CUDA graphs as vLLM captures them; its replay is `{peer_replay_key}`), and our own 35-size"
        " capture for the growth rows.",
        "",
    ]
    lines += targets_table(rows15)
    lines += [""] + growth_section(ours)
    lines += [
        "",
        "### Targets (issue 5)",
        "",
        "Ratio = ours / peer. Peer = PyTorch default mode unless the figure says otherwise;"
        f" PyTorch's replay is `{peer_replay_key}`.",
        "",
    ]
    lines += targets_table(rows5)
    lines += [""] + capture_section(ours, floor, torches)
    lines += [""] + latency_section(ours, tdef, tcomp, peer_replay_key)
    lines += [""] + memory_section(ours, torches)
    lines += [""] + startup_section(merged, tdef, tcomp)
    lines += correctness_section(tdef, tcomp)
    return "\n".join(lines) + "\n"


def write_readme(path: str, section: str) -> None:
    block = f"{START}\n{section}{END}"
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        text = "# Benchmarks\n\n"
    if START in text and END in text and text.index(START) < text.index(END):
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n## Results\n\n" + block + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def read_device_txt(path: str | None) -> dict:
    """The first line of `nvidia-smi --query-gpu=name,driver_version,memory.total
    --format=csv,noheader`: {name, driver, memory}."""
    if not path:
        return {}
    try:
        with open(path) as f:
            first = f.readline().strip()
    except OSError:
        return {}
    fields = [x.strip() for x in first.split(",")]
    if len(fields) < 3:
        return {}
    return {"name": fields[0], "driver": fields[1], "memory": fields[2]}


def git_commit() -> str | None:
    """The commit measured: BENCH_COMMIT when set (the GPU machine gets a copy of the working
    tree whose git metadata need not be current), else this checkout's HEAD."""
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(
            ["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        return (out.stdout.strip() or None) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def load_torches(args) -> dict[str, dict]:
    """The peer_torch.py JSONs by label: default, gc, compile, then the extras by their mode."""
    torches: dict[str, dict] = {}
    for label, path in (("default", args.torch_default), ("gc", args.torch_gc), ("compile", args.torch_compile)):
        t = load(path, f"--torch-{label}")
        if t:
            torches[label] = t
    for path in args.torch_extra:
        t = load(path, "--torch-extra")
        if t:
            label = torch_label(t, "extra")
            while label in torches:
                label += "+"
            torches[label] = t
    return torches


def build_report(args) -> tuple[dict, str] | None:
    """(merged JSON, Markdown section), or None when no input is usable."""
    ours = load(args.ours, "--ours")
    second = load(args.ours_second, "--ours-second")
    floor = load(args.floor, "--floor")
    torches = load_torches(args)
    if not (ours or second or floor or torches):
        return None
    tdef, tcomp = torches.get("default", {}), torches.get("compile", {})

    device_txt = read_device_txt(args.device_txt)
    tv = next((t.get("versions", {}) for t in torches.values() if isinstance(t.get("versions"), dict)), {})
    gpu = get(ours, "device") or device_txt.get("name") or tv.get("gpu") or get(tdef, "device") or get(floor, "device") or "unknown GPU"
    versions = {
        "torch": tv.get("torch"),
        "torch_cuda": tv.get("cuda"),
        "python": tv.get("python"),
        "driver": device_txt.get("driver") or get(ours, "driver"),
        "driver_cuda": tv.get("driver_cuda"),
        "gpu_memory": device_txt.get("memory"),
        "gpu_torch": tv.get("gpu"),
        "gpu_ours": get(ours, "device"),
        "gpu_floor": get(floor, "device"),
    }
    date = args.date or dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()

    rows15 = targets_issue15(ours, second, floor, tcomp, args.peer_replay_key)
    rows5 = targets(ours, second, floor, tdef, args.peer_replay_key)
    serve = load(args.serve_start, "--serve-start")
    rows29 = targets_issue29(ours, floor, serve, tcomp, args.peer_replay_key)

    def public(rows):
        return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]

    merged = {
        "schema": "bench_report/2",
        "date": date,
        "gpu": gpu,
        "slug": slug(gpu),
        "git_commit": git_commit(),
        "versions": versions,
        "inputs": {
            "ours": args.ours,
            "ours_second": args.ours_second,
            "floor": args.floor,
            "torch_compile": args.torch_compile,
            "torch_default": args.torch_default,
            "torch_gc": args.torch_gc,
            "torch_extra": args.torch_extra,
            "serve_start": args.serve_start,
        },
        "peer_replay_key": args.peer_replay_key,
        "ours": ours,
        "ours_second": second,
        "ours_startup_second": startup_second(ours, second),
        "floor": floor,
        "serve_start": serve,
        "torch": torches,
        "targets_issue15": public(rows15),
        "summary_issue15": summarize(rows15),
        "targets": public(rows5),
        "summary": summarize(rows5),
        "targets_issue29": public(rows29),
        "summary_issue29": summarize(rows29),
    }
    return merged, markdown(merged, rows15, rows5, rows29, args.peer_replay_key)


def write_outputs(args, merged: dict, section: str) -> str:
    os.makedirs(args.results_dir, exist_ok=True)
    out_json = os.path.join(args.results_dir, f"{merged['slug']}.json")
    with open(out_json, "w") as f:
        json.dump(merged, f, indent=2)
        f.write("\n")
    write_readme(args.readme, section)
    return out_json


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Merge benchmark JSONs and judge the targets of issues 29, 15 and 5.")
    p.add_argument("--ours", help="decode_bench --json output")
    p.add_argument("--ours-second", help="decode_bench --json of a second process (warm kernel cache)")
    p.add_argument("--floor", help="driver_floor --json output")
    p.add_argument("--torch-compile", help="peer_torch.py --mode compile output (the issue 15 peer)")
    p.add_argument("--torch-default", help="peer_torch.py --mode default output (the issue 5 peer)")
    p.add_argument("--torch-gc", help="peer_torch.py --mode gc output")
    p.add_argument("--torch-extra", action="append", default=[], help="more peer_torch.py outputs (repeatable)")
    p.add_argument("--serve-start", help="decode_bench --serve-start --json output (issue 29's start-up)")
    p.add_argument("--results-dir", default="bench/results", help="where <gpu-slug>.json goes")
    p.add_argument("--readme", default="bench/README.md", help="Markdown file whose results section is replaced")
    p.add_argument("--peer-replay-key", default="replay_us_wall",
                   choices=["replay_us_wall", "replay_us_events", "run_us_wall"],
                   help="which PyTorch replay figure the replay targets compare against")
    p.add_argument("--device-txt", help="nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader")
    p.add_argument("--date", help="override the run date (ISO 8601)")
    p.add_argument("--self-test", action="store_true",
                   help="judge synthetic JSONs in a temporary folder and check the verdicts (no GPU)")
    return p


# ---- --self-test ----


def synthetic_inputs() -> dict[str, dict]:
    """One run's JSONs whose issue-15 verdicts are known: some pass, some fail, some figures are
    missing (no memory floor, no b = 64 in the compile peer, no 512-size growth row)."""
    ours = {
        "device": "Synthetic GPU", "graphs": 35, "capture_s": 0.100, "kernels_per_forward": 140,
        "replay_us": {"1": 1000.0, "8": 1500.0, "64": 1800.0, "256": 2000.0}, "run_host_us": 8.1,
        "staged_run_host_us": 2.5,
        "startup": {"total_s": 0.9},
        "growth": [
            {"sizes": 35, "largest": 256, "capture_s": 0.070, "per_graph_ms": 2.0, "pool_bytes": 100, "largest_graph_bytes": 98},
            {"sizes": 67, "largest": 512, "capture_s": 0.161, "per_graph_ms": 2.4, "pool_bytes": 120, "largest_graph_bytes": 100},
        ],
    }
    second = {"capture_s": 0.120, "kernels_per_forward": 140, "startup": {"total_s": 0.5}}
    floor = {"graphs": 35, "nodes": 140, "capture_s": 0.090}
    compile_peer = {
        "mode": "compile", "peer": "strong", "replay_us_wall": {"1": 2000.0, "8": 2000.0, "256": 4000.0},
        "startup": {"total_s": 95.0}, "kernels_per_forward": 400, "replay_host_us": {"1": 20.0},
        "compile": {"graphs_compiled": 1, "recompiles": 0, "graph_breaks": 0},
    }
    serve = {"serve_start": {"first_served_s": 0.3, "all_live_s": 0.7}}
    return {"ours": ours, "ours_second": second, "floor": floor, "torch_compile": compile_peer, "serve_start": serve}


# id -> the verdict synthetic_inputs() must get.
EXPECTED_ISSUE15 = {
    "capture_first": True,  # 0.100 / 0.090 = 1.11 <= 1.3
    "capture_second": False,  # 0.120 / 0.090 = 1.33 > 1.1
    "replay_b1_memory_floor": None,  # no memory_floor_us
    "replay_b1_vs_compile": True,  # 0.5
    "replay_b8_vs_compile": False,  # 0.75
    "replay_b64_vs_compile": None,  # the peer has no b = 64
    "replay_b256_vs_compile": True,  # 0.5
    "startup_second": True,  # 0.5 s
    "kernels_b1": True,  # 140
    "run_host_b1": False,  # 8.1 µs > 5
    "growth_per_graph_67": True,  # 1.2
    "growth_per_graph_512": None,  # no 512 row
    "growth_pool_35": True,  # 100 / 98
    "growth_pool_67": False,  # 1.2
    "growth_pool_512": None,
}

# id -> the verdict synthetic_inputs() must get in issue 29's table.
EXPECTED_ISSUE29 = {
    "serve_first_served": True,  # 0.3 s
    "serve_all_live": False,  # 0.7 s > 0.6
    "capture_first_29": True,  # 1.11 <= 2
    "staged_host_b1": True,  # 2.5 µs
    "run_host_b1_29": False,  # 8.1 µs > 5
    "replay_b1_vs_strong": True,  # 0.5
    "replay_b8_vs_strong": True,  # 0.75
    "replay_b64_vs_strong": None,  # the peer has no b = 64
    "replay_b256_vs_strong": True,  # 0.5
}


def self_test() -> int:
    checks: list[tuple[str, bool]] = []

    def check(name: str, ok: bool) -> None:
        checks.append((name, bool(ok)))
        if not ok:
            print(f"report self-test: FAILED {name}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="report_selftest_") as tmp:
        def write(name: str, data) -> str:
            path = os.path.join(tmp, name)
            with open(path, "w") as f:
                f.write(data if isinstance(data, str) else json.dumps(data))
            return path

        def run(**paths):
            readme = os.path.join(tmp, "README.md")
            argv = ["--results-dir", os.path.join(tmp, "results"), "--readme", readme, "--date", "2000-01-01T00:00:00+00:00"]
            for key, path in paths.items():
                argv += [f"--{key.replace('_', '-')}", path]
            args = parser().parse_args(argv)
            built = build_report(args)
            if built is None:
                return None, None, None
            merged, section = built
            write_outputs(args, merged, section)
            return merged, section, {r["id"]: r for r in merged["targets_issue15"]}

        # 1. Known verdicts: pass, fail, not measured.
        inputs = synthetic_inputs()
        write("README.md", f"# Benchmarks\n\nText kept.\n\n{START}\nold results\n{END}\n\nTail kept.\n")
        merged, section, by_id = run(**{k: write(f"{k}.json", v) for k, v in inputs.items()})
        for row_id, want in EXPECTED_ISSUE15.items():
            got = by_id.get(row_id, {}).get("holds", "missing")
            check(f"{row_id} judged {verdict(want)}", got is want)
        check("every issue-15 row is expected", set(by_id) == set(EXPECTED_ISSUE15))
        s = merged["summary_issue15"]
        check("issue-15 summary counts", (s["held"], s["failed"], s["unknown"]) == (7, 4, 4))
        by_id29 = {r["id"]: r for r in merged["targets_issue29"]}
        for row_id, want in EXPECTED_ISSUE29.items():
            got = by_id29.get(row_id, {}).get("holds", "missing")
            check(f"issue 29: {row_id} judged {verdict(want)}", got is want)
        check("every issue-29 row is expected", set(by_id29) == set(EXPECTED_ISSUE29))
        check("Markdown has the issue-29 table", "### Targets (issue 29)" in section)
        check("Markdown has the issue-15 table first",
              "### Targets (issue 15)" in section and section.index("issue 15)") < section.index("### Targets (issue 5)"))
        check("missing figures print not measured and a dash",
              f"| {DASH} | {NOT_MEASURED} |" in section and "memory floor" in section)
        with open(os.path.join(tmp, "README.md")) as f:
            readme = f.read()
        check("README: text around the section kept, old results replaced",
              "Text kept." in readme and "Tail kept." in readme and "old results" not in readme and "### Targets (issue 15)" in readme)
        with open(os.path.join(tmp, "results", "synthetic-gpu.json")) as f:
            saved = json.load(f)
        check("results JSON carries the issue-15 judgements", saved["targets_issue15"][0]["id"] == "capture_first")

        # 2. A floor of another node count is not comparable: not measured, not a pass.
        bad_floor = write("floor_284.json", {"graphs": 35, "nodes": 284, "capture_s": 1.0})
        _, _, by_id = run(ours=write("ours.json", inputs["ours"]), floor=bad_floor)
        check("floor of another node count: not measured", by_id["capture_first"]["holds"] is None)
        plain = dict(inputs["torch_compile"], peer="plain")
        merged, _, _ = run(ours=write("ours.json", inputs["ours"]), torch_compile=write("plain.json", plain))
        check("issue 29: a plain compile peer is not judged",
              all(r["holds"] is None for r in merged["targets_issue29"] if r["id"].endswith("_vs_strong")))
        left = {"serve_start": {"first_served_s": 0.3, "all_live_s": 0.5, "pending": 2}}
        merged, _, _ = run(ours=write("ours.json", inputs["ours"]), serve_start=write("left.json", left))
        by29 = {r["id"]: r for r in merged["targets_issue29"]}
        check("issue 29: all live with graphs still pending is not a pass", by29["serve_all_live"]["holds"] is False)

        # 3. Wrong types and garbage: no crash, nothing passes.
        junk = {"capture_s": "fast", "replay_us": "1000", "growth": {"sizes": 35}, "kernels_per_forward": None,
                "run_host_us": {"8": 1.0}, "startup": [], "memory_floor_us": "—"}
        merged, section, by_id = run(ours=write("junk.json", junk), floor=write("broken.json", "{not json"),
                                     torch_compile=write("list.json", "[1, 2]"))
        check("garbage inputs: no target holds", merged is not None and all(r["holds"] is None for r in by_id.values()))

        # 4. No usable input at all.
        merged, _, _ = run(ours=os.path.join(tmp, "absent.json"))
        check("no usable input: reported, no crash", merged is None)

    failed = sum(1 for _, ok in checks if not ok)
    print(f"report self-test: {len(checks) - failed} passed, {failed} failed")
    return 1 if failed else 0


def main() -> int:
    args = parser().parse_args()
    if args.self_test:
        return self_test()
    built = build_report(args)
    if built is None:
        print("report: no usable input at all", file=sys.stderr)
        return 1
    merged, section = built
    out_json = write_outputs(args, merged, section)
    print(section)
    print(f"report: wrote {out_json} and the results section of {args.readme}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
