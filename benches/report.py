#!/usr/bin/env python3
"""Merges the benchmark JSONs of one GPU run and judges the targets of issue 5.

  python3 benches/report.py --ours ours.json [--ours-second ours_second.json] \
      --floor floor.json --torch-default torch_default.json --torch-gc torch_gc.json \
      [--torch-extra torch_vllm.json ...] [--device-txt device.txt] \
      --results-dir bench/results --readme bench/README.md

Any input may be missing or lack keys: its figures show as "—" and its targets as "n/a".

Inputs (keys read; everything else is carried into the merged JSON untouched):
  --ours        decode_bench --json: device, capture_s, capture_parts {warmup, record,
                instantiate, upload}, pool_bytes, replay_us {"1","8","64","256"}, eager_us {...},
                run_host_us (a number, or {"1": ...}), kernels_per_forward (or nodes), startup
                {context_s, compile_s, weights_s, capture_s, total_s, modules_compiled (or
                kernels_compiled)}, startup_second {same}, capture_reclaim_each_s,
                capture_reclaim_once_s, capture_lazy_build_s, capture_lazy_first_call_us,
                capture_lazy_second_call_us, recapture_s, refresh_s, refresh_in_place
  --ours-second decode_bench --json of a second process (warm kernel cache): its `startup` is
                used as startup_second when --ours has none
  --floor       driver_floor --json: graphs, nodes, capture_s, record_s, instantiate_s, upload_s
  --torch-*     benches/peer_torch.py output (see the keys documented at the top of that file)
  --device-txt  nvidia-smi's "name, driver_version, memory.total" line (scripts/bench.sh writes it)

Outputs:
  <results-dir>/<gpu-name-slug>.json   {schema, date, gpu, slug, git_commit, versions, inputs,
                ours, ours_second, floor, torch {default, gc, <extra labels>}, targets [{figure,
                target, ours, peer, ratio, holds}], summary {targets, held, failed, unknown}}
  --readme      the Markdown tables, written between <!-- results:start --> and
                <!-- results:end --> (the section is appended when the markers are absent)
  stdout        the same Markdown
Ratios are always ours / reference (the peer column), so "≤ 0.6x" reads directly.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys

START = "<!-- results:start -->"
END = "<!-- results:end -->"
BATCHES = ["1", "8", "64", "256"]
CAPTURE_SPEEDUP = 10.0  # ours >= 10x faster than PyTorch default
FLOOR_RATIO = 1.3  # ours <= 1.3x the driver floor
REPLAY_RATIO = 0.6  # ours <= 0.6x PyTorch's replay
HOST_US = 10.0  # one run() <= 10 µs on the host
COMPILE_NONE_S = 0.05  # "compiles no kernel" when no count is given: compile_s below this


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


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def startup_second(ours: dict, second: dict) -> dict:
    s = get(ours, "startup_second")
    if isinstance(s, dict) and s:
        return s
    s = get(second, "startup")
    return s if isinstance(s, dict) else {}


def compiled_nothing(s: dict) -> bool | None:
    for key in ("kernels_compiled", "compiled_kernels", "modules_compiled"):
        if num(get(s, key)) is not None:
            return num(get(s, key)) == 0
    c = num(get(s, "compile_s"))
    return None if c is None else c < COMPILE_NONE_S


def targets(ours: dict, second: dict, floor: dict, tdef: dict, peer_replay_key: str) -> list[dict]:
    rows: list[dict] = []

    def row(figure, target, o, p, r, holds, fmt_o, fmt_p):
        rows.append(
            {
                "figure": figure,
                "target": target,
                "ours": num(o) if not isinstance(o, str) else o,
                "peer": num(p) if not isinstance(p, str) else p,
                "ratio": r,
                "holds": holds,
                "_ours": fmt_o(o),
                "_peer": fmt_p(p),
            }
        )

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
    label = str(mode)
    if layout != "thd":
        label += f"-{layout}"
    if outputs != "weak":
        label += f"-{outputs}"
    return label


TORCH_MODE_TEXT = {
    "default": "PyTorch, torch.cuda.graph as shipped",
    "gc": "PyTorch, gc.collect() + empty_cache() before each graph",
    "vllm": "PyTorch, vLLM-style (gc frozen, no gc/empty_cache per graph)",
}


def markdown(merged: dict, rows: list[dict], peer_replay_key: str) -> str:
    ours, floor = merged["ours"], merged["floor"]
    torches: dict = merged["torch"]
    tdef = torches.get("default", {})
    v = merged["versions"]
    lines = []
    lines.append(
        f"Run of {merged['date']} on **{merged['gpu']}**"
        + (f" (driver {v['driver']})" if v.get("driver") else "")
        + (f", CUDA driver API {v['driver_cuda']}" if v.get("driver_cuda") else "")
        + f"; PyTorch {v.get('torch', DASH)} (CUDA {v.get('torch_cuda', DASH)}), Python {v.get('python', DASH)}"
        + (f"; commit `{merged['git_commit'][:12]}`" if merged.get("git_commit") else "")
        + "."
    )
    s = merged["summary"]
    lines.append(
        f"Targets held: {s['held']} of {s['targets']}"
        + (f" ({s['failed']} missed" if s["failed"] else " (none missed")
        + (f", {s['unknown']} without data)" if s["unknown"] else ")")
        + "."
    )
    lines.append("")
    lines.append("### Targets (issue 5)")
    lines.append("")
    lines.append("Ratio = ours / peer. Peer = PyTorch default mode unless the figure says otherwise;"
                 f" PyTorch's replay is `{peer_replay_key}`.")
    lines.append("")
    lines.append("| figure | target | ours | peer | ratio | holds? |")
    lines.append("|---|---|---:|---:|---:|:---:|")
    for r in rows:
        lines.append(
            f"| {r['figure']} | {r['target']} | {r['_ours']} | {r['_peer']} | {f_ratio(r['ratio'])} | {verdict(r['holds'])} |"
        )

    # Capture.
    lines.append("")
    lines.append("### Capture of all 35 sizes")
    lines.append("")
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

    # Latency.
    lines.append("")
    lines.append("### Latency per batch")
    lines.append("")
    lines.append("| batch | ours eager | ours graph | PyTorch eager | PyTorch replay (events) | PyTorch replay (wall) | PyTorch copy + replay (wall) | ours graph / PyTorch replay |")
    lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for b in BATCHES:
        lines.append(
            f"| {b} | {f_us(get(ours, 'eager_us', b))} | {f_us(get(ours, 'replay_us', b))} | "
            f"{f_us(get(tdef, 'eager_us', b))} | {f_us(get(tdef, 'replay_us_events', b))} | "
            f"{f_us(get(tdef, 'replay_us_wall', b))} | {f_us(get(tdef, 'run_us_wall', b))} | "
            f"{f_ratio(ratio(get(ours, 'replay_us', b), get(tdef, peer_replay_key, b)))} |"
        )
    host = get(tdef, "replay_host_us")
    if isinstance(host, dict) and host:
        lines.append("")
        lines.append(
            "PyTorch host time of static copies + `g.replay()` (no synchronize): "
            + ", ".join(f"b = {b}: {f_us(host.get(b))}" for b in BATCHES if b in host)
            + f"; ours run(): {f_us(per_size(get(ours, 'run_host_us')))}."
        )

    # Memory and kernels.
    lines.append("")
    lines.append("### Memory and kernels")
    lines.append("")
    lines.append("| | ours | PyTorch default | PyTorch gc |")
    lines.append("|---|---:|---:|---:|")
    tgc = torches.get("gc", {})
    lines.append(f"| graph pool | {f_bytes(get(ours, 'pool_bytes'))} | {f_bytes(get(tdef, 'pool_bytes'))} | {f_bytes(get(tgc, 'pool_bytes'))} |")
    lines.append(
        f"| reserved delta (PyTorch allocator, after empty_cache) | {DASH} | "
        f"{f_bytes(get(tdef, 'memory', 'reserved_delta_after_empty_cache'))} | {f_bytes(get(tgc, 'memory', 'reserved_delta_after_empty_cache'))} |"
    )
    lines.append(
        f"| device memory delta (cudaMemGetInfo) | {f_bytes(get(ours, 'driver_used_delta'))} | "
        f"{f_bytes(get(tdef, 'memory', 'driver_used_delta'))} | {f_bytes(get(tgc, 'memory', 'driver_used_delta'))} |"
    )
    lines.append(
        f"| kernels per forward, b = 1 | {f_int(get(ours, 'kernels_per_forward', default=get(ours, 'nodes')))} | "
        f"{f_int(get(tdef, 'kernels_per_forward'))} | {f_int(get(tgc, 'kernels_per_forward'))} |"
    )
    lines.append(
        f"| kernels per forward, b = 256 | {f_int(get(ours, 'kernels_per_forward_by_size', '256'))} | "
        f"{f_int(get(tdef, 'kernels_per_forward_by_size', '256'))} | {f_int(get(tgc, 'kernels_per_forward_by_size', '256'))} |"
    )
    lines.append(
        f"| kernels in one replay, b = 1 (ours: graph nodes) | {f_int(get(ours, 'nodes', default=get(ours, 'kernels_per_forward')))} | "
        f"{f_int(get(tdef, 'kernels_per_replay'))} | {f_int(get(tgc, 'kernels_per_replay'))} |"
    )

    # Start-up.
    lines.append("")
    lines.append("### Start-up to ready")
    lines.append("")
    lines.append("| process | context / CUDA init | kernel compile | weights | first forward | capture | total |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for label, s in (("ours, first start", get(ours, "startup")), ("ours, second start (kernel cache warm)", merged["ours_startup_second"])):
        s = s if isinstance(s, dict) else {}
        lines.append(
            f"| {label} | {f_s(s.get('context_s'))} | {f_s(s.get('compile_s'))} | {f_s(s.get('weights_s'))} | "
            f"{f_s(s.get('first_forward_s'))} | {f_s(s.get('capture_s'))} | {f_s(s.get('total_s'))} |"
        )
    st = get(tdef, "startup") if isinstance(get(tdef, "startup"), dict) else {}
    if st:
        lines.append(
            f"| PyTorch default (import torch {f_s(st.get('import_s'))}) | {f_s(st.get('cuda_init_s'))} | {DASH} | "
            f"{f_s(st.get('weights_s'))} | {f_s(st.get('first_forward_s'))} | {f_s(st.get('capture_s'))} | {f_s(st.get('total_s'))} |"
        )
    errs = get(tdef, "replay_vs_eager_rel_err")
    if isinstance(errs, dict) and errs:
        lines.append("")
        lines.append(
            "PyTorch graph vs eager relative error: "
            + ", ".join(f"b = {k}: {num(x):.1e}" for k, x in errs.items() if num(x) is not None)
            + "."
        )
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
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(
            ["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        return (out.stdout.strip() or None) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def main() -> int:
    p = argparse.ArgumentParser(description="Merge benchmark JSONs and judge issue 5's targets.")
    p.add_argument("--ours", help="decode_bench --json output")
    p.add_argument("--ours-second", help="decode_bench --json of a second process (warm kernel cache)")
    p.add_argument("--floor", help="driver_floor --json output")
    p.add_argument("--torch-default", help="peer_torch.py --mode default output")
    p.add_argument("--torch-gc", help="peer_torch.py --mode gc output")
    p.add_argument("--torch-extra", action="append", default=[], help="more peer_torch.py outputs (repeatable)")
    p.add_argument("--results-dir", default="bench/results", help="where <gpu-slug>.json goes")
    p.add_argument("--readme", default="bench/README.md", help="Markdown file whose results section is replaced")
    p.add_argument("--peer-replay-key", default="replay_us_wall",
                   choices=["replay_us_wall", "replay_us_events", "run_us_wall"],
                   help="which PyTorch replay figure the replay targets compare against")
    p.add_argument("--device-txt", help="nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader")
    p.add_argument("--date", help="override the run date (ISO 8601)")
    args = p.parse_args()

    ours = load(args.ours, "--ours")
    second = load(args.ours_second, "--ours-second")
    floor = load(args.floor, "--floor")
    torches: dict[str, dict] = {}
    for label, path in (("default", args.torch_default), ("gc", args.torch_gc)):
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
    if not (ours or floor or torches):
        print("report: no usable input at all", file=sys.stderr)
        return 1
    tdef = torches.get("default", {})

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

    rows = targets(ours, second, floor, tdef, args.peer_replay_key)
    held = sum(1 for r in rows if r["holds"] is True)
    failed = sum(1 for r in rows if r["holds"] is False)
    merged = {
        "schema": "bench_report/1",
        "date": date,
        "gpu": gpu,
        "slug": slug(gpu),
        "git_commit": git_commit(),
        "versions": versions,
        "inputs": {
            "ours": args.ours,
            "ours_second": args.ours_second,
            "floor": args.floor,
            "torch_default": args.torch_default,
            "torch_gc": args.torch_gc,
            "torch_extra": args.torch_extra,
        },
        "peer_replay_key": args.peer_replay_key,
        "ours": ours,
        "ours_second": second,
        "ours_startup_second": startup_second(ours, second),
        "floor": floor,
        "torch": torches,
        "targets": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
        "summary": {"targets": len(rows), "held": held, "failed": failed, "unknown": len(rows) - held - failed},
    }
    section = markdown(merged, rows, args.peer_replay_key)

    os.makedirs(args.results_dir, exist_ok=True)
    out_json = os.path.join(args.results_dir, f"{merged['slug']}.json")
    with open(out_json, "w") as f:
        json.dump(merged, f, indent=2)
        f.write("\n")
    write_readme(args.readme, section)
    print(section)
    print(f"report: wrote {out_json} and the results section of {args.readme}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
