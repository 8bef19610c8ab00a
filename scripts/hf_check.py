#!/usr/bin/env python3
"""Reference check of the Hugging Face loader against transformers, on the GPU machine.

For each case (one per family, plus variants: tied embeddings with attention biases, float32
weights, a sharded checkpoint), builds a small random-weight model with transformers
(`AutoModelForCausalLM.from_config`, fixed seed, norm weights and biases randomised too so every
weight matters), saves it with `save_pretrained(..., safe_serialization=True)`, runs our
`decode_bench --model DIR` on the folder, and compares:

* the logits at the last prompt position (our eager and graph runs, dumped with
  `--dump-logits`) with transformers' (bf16 on CUDA, one full forward over the prompt):
  relative error ||ours - ref|| / ||ref||. The truth is transformers in float32: a case passes
  when our eager and graph logits are as close to it as transformers' own bf16 logits are
  (within 25 %, or within 2e-2), and within 4e-2 of transformers' bf16 logits (two independent
  bf16 roundings of one model);
* the greedy ids of 16 steps (ours: eager and graphs) with transformers' greedy ids (a manual
  argmax loop with transformers' KV cache, as `generate` runs: one forward over the prompt, then
  one token per step), both stopping after an EOS id of the config. The `llama-eos-stop` case
  makes the id transformers generates at step 5 the EOS id (in config.json and
  generation_config.json), so both must stop there.

Our prompt is prefilled in one batched forward (`Llama::prefill`), as transformers' first
forward. The RoPE-scaling cases (`rope_type` linear, dynamic, llama3, yarn) use a 40-token prompt
over an original context of 32 positions, so the prompt and the generated tokens reach past it.

Each case except the dynamic one runs a second time with `--prefill steps`: the graphs' own
prompt logits (one replay per prompt token) against the same bounds, and their greedy ids.
`llama-rope-llama3-legacy` rewrites its config.json in transformers 4's spelling (`rope_scaling`
with `type`, top-level `rope_theta` and an `original_max_position_embeddings` that must win over
the object's different one).

The tokenizer case builds a byte-level BPE tokenizer with the `tokenizers` package (trained on a
few sentences, with a BOS template), saves it as the checkpoint's tokenizer.json, runs
`decode_bench --prompt TEXT --max-new-tokens 8` on three texts and compares our prompt ids with transformers'
tokenizer (`PreTrainedTokenizerFast` on the same file), our decoded texts (the prompt's round
trip and the generated text) with transformers' decode of the same ids, and our greedy ids with
transformers' greedy ids from those prompt ids.

Random tiny models can have near-tied top logits, where bf16 noise alone flips a greedy choice.
Seeds are therefore tried in order (0, 1, ...) until transformers' top-2 margin, relative to the
logits' RMS, stays above --min-margin at every one of the 16 steps; the seed and the smallest
margin are printed. If greedy ids still diverge, the table says at which step and how close
transformers' own logits for the two tokens were.

Nothing is downloaded. Usage (the bundle has the binary and this script):

    python3 gpu-bundle/hf_check.py gpu-bundle/decode_bench [--out DIR] [--cases a,b] [--keep]
    python3 scripts/hf_check.py --self-test      # the pure-Python helpers, no torch needed

Exit status: 0 when every case passes, 1 otherwise (2 for usage errors).
"""

import argparse
import copy
import glob
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PROMPT = [1, 17, 42, 99, 7, 123, 256, 11]
# The RoPE-scaling cases: 40 tokens, past their original context of 32 positions.
LONG_PROMPT = [(7 * i * i + 3 * i + 1) % 997 + 3 for i in range(40)]
ORIGINAL_CONTEXT = 32
STEPS = 16
LOGIT_TOL = 2e-2
PAIR_TOL = 4e-2
INIT_RANGE = 0.1  # initializer_range: larger than the default 0.02 so attention is not uniform

# name, family, config fields, rope_theta, saved dtype, max_shard_size
CASES = [
    dict(
        name="llama-gqa-untied",
        family="llama",
        fields=dict(
            vocab_size=2048, hidden_size=256, intermediate_size=688, num_hidden_layers=3,
            num_attention_heads=8, num_key_value_heads=2, rms_norm_eps=1e-5,
            tie_word_embeddings=False, attention_bias=False, max_position_embeddings=256,
        ),
        theta=50_000.0, dtype="bfloat16", shard=None,
    ),
    dict(
        name="llama-bias-tied",
        family="llama",
        fields=dict(
            vocab_size=1536, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-6,
            tie_word_embeddings=True, attention_bias=True, max_position_embeddings=256,
        ),
        theta=20_000.0, dtype="bfloat16", shard=None,
    ),
    dict(
        name="qwen2-f32-tied",
        family="qwen2",
        fields=dict(
            vocab_size=3000, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
            tie_word_embeddings=True, max_position_embeddings=256,
        ),
        theta=1_000_000.0, dtype="float32", shard=None,
    ),
    dict(
        name="qwen3-hd96-sharded",
        family="qwen3",
        fields=dict(
            vocab_size=4000, hidden_size=256, intermediate_size=512, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=96, rms_norm_eps=1e-6,
            tie_word_embeddings=False, max_position_embeddings=256,
        ),
        theta=1_000_000.0, dtype="bfloat16", shard="3MB",
    ),
    dict(
        name="mistral-gqa",
        family="mistral",
        fields=dict(
            vocab_size=2500, hidden_size=256, intermediate_size=640, num_hidden_layers=2,
            num_attention_heads=8, num_key_value_heads=4, head_dim=32, rms_norm_eps=1e-5,
            tie_word_embeddings=False, sliding_window=4096, max_position_embeddings=256,
        ),
        theta=100_000.0, dtype="bfloat16", shard=None,
    ),
    dict(
        name="llama-eos-stop",
        family="llama",
        fields=dict(
            vocab_size=2048, hidden_size=256, intermediate_size=688, num_hidden_layers=3,
            num_attention_heads=8, num_key_value_heads=2, rms_norm_eps=1e-5,
            tie_word_embeddings=False, attention_bias=False, max_position_embeddings=256,
        ),
        theta=50_000.0, dtype="bfloat16", shard=None, eos_at=5,
    ),
    dict(
        name="llama-rope-llama3",
        family="llama",
        fields=dict(
            vocab_size=2048, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
            tie_word_embeddings=False, max_position_embeddings=128,
        ),
        theta=500_000.0, dtype="bfloat16", shard=None,
        rope=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                  original_max_position_embeddings=ORIGINAL_CONTEXT),
    ),
    dict(
        # The llama-rope-llama3 model (the same fields, so the same seed and weights): only the
        # config.json spelling differs.
        name="llama-rope-llama3-legacy",
        family="llama",
        fields=dict(
            vocab_size=2048, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
            tie_word_embeddings=False, max_position_embeddings=128,
        ),
        theta=500_000.0, dtype="bfloat16", shard=None, legacy=True,
        rope=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                  original_max_position_embeddings=ORIGINAL_CONTEXT),
    ),
    dict(
        name="llama-rope-linear",
        family="llama",
        fields=dict(
            vocab_size=2048, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-5,
            tie_word_embeddings=True, max_position_embeddings=128,
        ),
        theta=10_000.0, dtype="bfloat16", shard=None,
        rope=dict(rope_type="linear", factor=4.0),
    ),
    dict(
        name="qwen2-rope-dynamic",
        family="qwen2",
        fields=dict(
            vocab_size=2048, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
            tie_word_embeddings=True, max_position_embeddings=ORIGINAL_CONTEXT,
        ),
        theta=10_000.0, dtype="bfloat16", shard=None,
        rope=dict(rope_type="dynamic", factor=4.0),
    ),
    dict(
        name="qwen3-rope-yarn",
        family="qwen3",
        fields=dict(
            vocab_size=2048, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-6,
            tie_word_embeddings=False, max_position_embeddings=128,
        ),
        theta=1_000_000.0, dtype="bfloat16", shard=None,
        rope=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=ORIGINAL_CONTEXT),
    ),
    dict(
        name="llama-tokenizer",
        family="llama",
        fields=dict(
            vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
            tie_word_embeddings=False, max_position_embeddings=256, bos_token_id=0,
            eos_token_id=1,
        ),
        theta=10_000.0, dtype="bfloat16", shard=None, tokenizer=True,
    ),
]

TOKENIZER_STEPS = 8
TOKENIZER_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "CUDA graphs replay a captured forward with one launch.",
    "Graphs, tensors and kernels: capture once, replay many times!",
    "Ünïcödé text, numbers 12345 and symbols #@%& too.",
]
TOKENIZER_TEXTS = [
    "The quick brown fox",
    "capture once, replay many times: 42 graphs",
    "Ünïcödé  spaces\tand a tab",
]


# ------------------------------------------------------------------------------------------
# Pure helpers (tested by --self-test without torch)
# ------------------------------------------------------------------------------------------

def parse_output(text):
    """The parseable lines of decode_bench's generation mode."""
    out = {}
    for line in text.splitlines():
        for key in ("ids eager", "ids graph", "prompt ids"):
            if line.startswith(key + ":"):
                out[key] = [int(x) for x in line.split(":", 1)[1].split()]
        for key in ("text eager", "text graph", "prompt text"):
            if line.startswith(key + ":"):
                out[key] = json.loads(line.split(":", 1)[1])
        for key in ("tok/s eager", "tok/s graph"):
            if line.startswith(key + ":"):
                out[key] = float(line.split(":", 1)[1])
    return out


def rel_error(a, b):
    """||a - b|| / ||b|| over two equal-length sequences of numbers."""
    if len(a) != len(b):
        raise ValueError(f"lengths differ: {len(a)} vs {len(b)}")
    diff = sum((float(x) - float(y)) ** 2 for x, y in zip(a, b))
    norm = sum(float(y) ** 2 for y in b)
    return math.sqrt(diff / norm) if norm > 0 else math.sqrt(diff)


def first_divergence(ours, ref):
    """Index of the first differing id (None when identical over the reference's length)."""
    for i, (x, y) in enumerate(zip(ours, ref)):
        if x != y:
            return i
    return None if len(ours) >= len(ref) else len(ours)


def lib_dirs():
    """Folders holding CUDA 13's NVRTC and cuBLAS: the toolkit's, else pip wheels' (torch's)."""
    import site

    roots = ["/usr/local/cuda*/lib64", "/usr/local/cuda*/targets/*/lib", "/usr/lib/x86_64-linux-gnu"]
    packages = list(site.getsitepackages()) + [site.getusersitepackages()]
    for p in packages:
        roots += [f"{p}/nvidia/*/lib", f"{p}/nvidia/*/*/lib"]
    found = []
    for lib in ("libnvrtc.so.13", "libcublas.so.13"):
        for root in roots:
            hits = sorted(glob.glob(f"{root}/{lib}"))
            if hits:
                d = os.path.dirname(os.path.realpath(hits[0]))
                if d not in found:
                    found.append(d)
                break
    return found


def self_test():
    text = ("prompt ids: 1 2\nids eager: 5 6 7\nids graph: 5 6 8\ntok/s eager: 12.5\n"
            "tok/s graph: 40.0\ntext eager: \"a: \\\"b\\\"\\n\"\n")
    parsed = parse_output(text)
    assert parsed["prompt ids"] == [1, 2] and parsed["text eager"] == 'a: "b"\n', parsed
    assert parsed["ids eager"] == [5, 6, 7] and parsed["ids graph"] == [5, 6, 8], parsed
    assert parsed["tok/s eager"] == 12.5 and parsed["tok/s graph"] == 40.0
    assert abs(rel_error([1.0, 2.0], [1.0, 2.0])) == 0.0
    assert abs(rel_error([1.1, 2.0], [1.0, 2.0]) - 0.1 / math.sqrt(5)) < 1e-12
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 9, 3], [1, 2, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2
    names = [c["name"] for c in CASES]
    assert len(set(names)) == len(names)
    for c in CASES:
        f = c["fields"]
        head_dim = f.get("head_dim", f["hidden_size"] // f["num_attention_heads"])
        assert head_dim % 8 == 0 and head_dim <= 256, c["name"]
        assert f["num_attention_heads"] % f["num_key_value_heads"] == 0, c["name"]
        assert max(PROMPT) < f["vocab_size"], c["name"]
    assert {c["family"] for c in CASES} == {"llama", "qwen2", "qwen3", "mistral"}
    assert {c["rope"]["rope_type"] for c in CASES if c.get("rope")} == {"linear", "dynamic", "llama3", "yarn"}
    assert len(LONG_PROMPT) > ORIGINAL_CONTEXT and max(LONG_PROMPT) < 2048
    assert any(c.get("tokenizer") for c in CASES)
    assert any(c.get("eos_at") is not None for c in CASES)
    assert any(c["dtype"] == "float32" for c in CASES) and any(c["shard"] for c in CASES)
    print("hf_check self-test: ok")


# ------------------------------------------------------------------------------------------
# With torch and transformers
# ------------------------------------------------------------------------------------------

def transformers_major():
    import transformers

    return int(transformers.__version__.split(".")[0])


def build_config(case):
    import transformers

    cls = {
        "llama": transformers.LlamaConfig,
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
        "mistral": transformers.MistralConfig,
    }[case["family"]]
    fields = dict(case["fields"], initializer_range=INIT_RANGE, hidden_act="silu")
    rope = dict(case.get("rope") or {"rope_type": "default"})
    if transformers_major() >= 5:
        cfg = cls(**fields, rope_parameters=dict(rope, rope_theta=case["theta"]))
        theta = cfg.rope_parameters["rope_theta"]
        if cfg.rope_parameters.get("rope_type") != rope["rope_type"]:
            raise RuntimeError(f"{case['name']}: rope_type {cfg.rope_parameters} != {rope}")
    else:
        scaling = None if rope["rope_type"] == "default" else rope
        cfg = cls(**fields, rope_theta=case["theta"], rope_scaling=scaling)
        theta = cfg.rope_theta
    if abs(theta - case["theta"]) > 1e-6 * case["theta"]:
        raise RuntimeError(f"{case['name']}: rope_theta {theta} != {case['theta']}")
    return cfg


def make_model(cfg, seed):
    """A float32 model from `cfg` with seed `seed`; norm weights in [0.8, 1.2] and biases in
    [-0.5, 0.5] (transformers initialises them to 1 and 0)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    except TypeError:
        model = AutoModelForCausalLM.from_config(cfg)
    model = model.float()
    gen = torch.Generator().manual_seed(10_000 + seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.rand(p.shape, generator=gen) * 0.4 + 0.8)
            elif name.endswith(".bias"):
                p.copy_(torch.rand(p.shape, generator=gen) - 0.5)
    return model.eval()


def eos_ids(cfg):
    eos = getattr(cfg, "eos_token_id", None)
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {eos}


def greedy(model, prompt, steps, eos=()):
    """transformers' greedy ids (one forward over the prompt, then one token per step with the
    KV cache, as `generate` runs; stopping after an id of `eos`), each step's top-2 margin
    relative to the logits' RMS, and the logits at the last prompt position (float32 copy)."""
    import torch

    out, margins, first = [], [], None
    with torch.no_grad():
        x = torch.tensor([list(prompt)], device="cuda")
        past = None
        for i in range(steps):
            res = model(x, past_key_values=past, use_cache=True)
            past = res.past_key_values
            logits = res.logits[0, -1].float()
            if i == 0:
                first = logits.clone()
            top = torch.topk(logits, 2).values
            rms = logits.pow(2).mean().sqrt()
            margins.append(float((top[0] - top[1]) / rms))
            nxt = int(torch.argmax(logits))
            out.append(nxt)
            if nxt in eos:
                break
            x = torch.tensor([[nxt]], device="cuda")
    return out, margins, first


def greedy_logits(model, ids):
    """The last position's logits of one forward over `ids` (float32 copy), as `greedy`'s first
    step computes them."""
    import torch

    with torch.no_grad():
        x = torch.tensor([list(ids)], device="cuda")
        return model(x, use_cache=True).logits[0, -1].float()


def logits_at(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids], device="cuda"), use_cache=False).logits[0, -1].float()


def save(model, case, folder):
    import torch

    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[case["dtype"]]
    to_save = copy.deepcopy(model).to(dtype)
    kwargs = dict(safe_serialization=True)
    if case["shard"]:
        kwargs["max_shard_size"] = case["shard"]
    try:
        to_save.save_pretrained(folder, **kwargs)
    except TypeError:
        kwargs.pop("safe_serialization")
        to_save.save_pretrained(folder, **kwargs)
    files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, "*.safetensors")))
    if not files:
        raise RuntimeError(f"{case['name']}: save_pretrained wrote no safetensors in {folder}")
    return files


def read_f32(path, count):
    import torch

    with open(path, "rb") as f:
        data = bytearray(f.read())
    if len(data) != 4 * count:
        raise RuntimeError(f"{path}: {len(data)} bytes, expected {4 * count}")
    return torch.frombuffer(data, dtype=torch.float32).clone()


def run_case(case, binary, work, min_margin, max_seeds, env):
    if case.get("tokenizer"):
        return run_tokenizer_case(case, binary, work, min_margin, max_seeds, env)
    import torch

    name = case["name"]
    prompt = LONG_PROMPT if case.get("rope") else PROMPT
    cfg = build_config(case)
    eos = eos_ids(cfg)
    # Pick the first seed whose greedy path has healthy margins.
    chosen = None
    for seed in range(max_seeds):
        model = make_model(cfg, seed)
        ref = copy.deepcopy(model).to(device="cuda", dtype=torch.bfloat16).eval()
        ids, margins, first = greedy(ref, prompt, STEPS, eos)
        if chosen is None or min(margins) > min(chosen[3]):
            chosen = (seed, model, ref, margins, ids, first)
        if min(margins) >= min_margin:
            break
    seed, model, ref, margins, ref_ids, ref_logits = chosen
    if case.get("eos_at") is not None:
        # The id transformers generates at step `eos_at` becomes the EOS id (config.json and
        # generation_config.json): both generations must stop there.
        eos = {ref_ids[case["eos_at"]]}
        for c in (model.config, getattr(model, "generation_config", None), ref.config,
                  getattr(ref, "generation_config", None)):
            if c is not None:
                c.eos_token_id = next(iter(eos))
        ref_ids = greedy(ref, prompt, STEPS, eos)[0]
        if len(ref_ids) >= STEPS:
            raise RuntimeError(f"{name}: transformers did not stop at EOS {eos}")
    folder = os.path.join(work, name)
    files = save(model, case, folder)
    with open(os.path.join(folder, "config.json")) as f:
        saved = json.load(f)
    if case.get("legacy"):
        # transformers 4's spelling: top-level rope_theta and rope_scaling with `type`, and a
        # top-level original_max_position_embeddings that wins over the object's (transformers'
        # standardize_rope_params), which here holds another value.
        params = saved.pop("rope_parameters")
        saved["rope_theta"] = params.pop("rope_theta")
        params["type"] = params.pop("rope_type")
        saved["original_max_position_embeddings"] = params["original_max_position_embeddings"]
        params["original_max_position_embeddings"] *= 2
        saved["rope_scaling"] = params
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(saved, f, indent=2)
    rope_keys = {k: saved[k] for k in ("rope_parameters", "rope_theta", "rope_scaling") if k in saved}

    dump = os.path.join(work, f"{name}.logits")
    cmd = [
        binary, "--model", folder, "--prompt-ids", ",".join(map(str, prompt)),
        "--max-new-tokens", str(STEPS), "--dump-logits", dump,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    log = proc.stdout + proc.stderr
    with open(os.path.join(work, f"{name}.log"), "w") as f:
        f.write(" ".join(cmd) + "\n" + log)
    row = dict(
        case=name, architecture=saved.get("architectures", ["?"])[0], dtype=case["dtype"],
        files=len(files), seed=seed, min_margin=min(margins), rope=rope_keys,
        ref_ids=ref_ids, status="FAIL", notes=[],
    )
    if proc.returncode != 0:
        row["notes"].append(f"decode_bench exit {proc.returncode}: {log.strip().splitlines()[-1:]}")
        return row
    parsed = parse_output(proc.stdout)
    vocab = cfg.vocab_size
    ours_eager = read_f32(dump, vocab)
    ours_graph = read_f32(dump + ".graph", vocab)
    ref_bf16 = ref_logits.cpu()
    f32_model = copy.deepcopy(model).to("cuda").eval()
    ref_f32 = logits_at(f32_model, prompt).cpu()
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    row.update(
        rel_eager=rel(ours_eager, ref_bf16), rel_graph=rel(ours_graph, ref_bf16),
        rel_ours_f32=rel(ours_eager, ref_f32), rel_hf_bf16_f32=rel(ref_bf16, ref_f32),
        ids_eager=parsed.get("ids eager"), ids_graph=parsed.get("ids graph"),
        tok_s_eager=parsed.get("tok/s eager"), tok_s_graph=parsed.get("tok/s graph"),
    )
    row["rel_graph_f32"] = rel(ours_graph, ref_f32)
    # The graphs' own prompt logits: with a batched prefill both runs prefill eagerly, so once
    # more with one graph replay per prompt token (not for a dynamic RoPE, whose per-token
    # lengths then differ from transformers' prompt-length one by design).
    steps_graph, steps_ids = None, None
    if (case.get("rope") or {}).get("rope_type") != "dynamic":
        dump_steps = os.path.join(work, f"{name}.steps.logits")
        cmd_steps = cmd[:-2] + ["--dump-logits", dump_steps, "--prefill", "steps"]
        proc = subprocess.run(cmd_steps, capture_output=True, text=True, env=env, timeout=600)
        with open(os.path.join(work, f"{name}.log"), "a") as f:
            f.write("\n" + " ".join(cmd_steps) + "\n" + proc.stdout + proc.stderr)
        if proc.returncode != 0:
            row["notes"].append(f"--prefill steps: decode_bench exit {proc.returncode}")
            row["status"] = "FAIL"
            return row
        steps_graph = read_f32(dump_steps + ".graph", vocab)
        steps_ids = parse_output(proc.stdout).get("ids graph")
        row["rel_graph_steps"] = rel(steps_graph, ref_bf16)
        row["rel_graph_steps_f32"] = rel(steps_graph, ref_f32)
        row["ids_graph_steps"] = steps_ids
    # The truth is transformers in float32. transformers' own bf16 run is itself about 2e-2 away
    # from it on these models (measured: 1.9e-2 to 2.4e-2), so a fixed 2e-2 bound against the
    # bf16 run would fail a path exactly as accurate as transformers'. We pass when our eager and
    # graph logits are as close to the f32 truth as transformers' bf16 logits are (within 25 %),
    # or within LOGIT_TOL of it; and within PAIR_TOL of transformers' bf16 logits (two
    # independent bf16 roundings of the same model).
    bound = max(LOGIT_TOL, 1.25 * row["rel_hf_bf16_f32"])
    ok = (
        row["rel_ours_f32"] <= bound
        and row["rel_graph_f32"] <= bound
        and row["rel_eager"] <= PAIR_TOL
        and row["rel_graph"] <= PAIR_TOL
    )
    if steps_graph is not None:
        steps_ok = row["rel_graph_steps_f32"] <= bound and row["rel_graph_steps"] <= PAIR_TOL
        if not steps_ok:
            row["notes"].append(
                f"graph replays per prompt token: vs HF f32 {row['rel_graph_steps_f32']:.2e} "
                f"(bound {bound:.2e}), vs HF bf16 {row['rel_graph_steps']:.2e} (bound {PAIR_TOL})"
            )
        if steps_ids != ref_ids:
            steps_ok = False
            row["notes"].append(f"graph replays per prompt token: greedy ids {steps_ids} != {ref_ids}")
        ok = ok and steps_ok
    if not ok:
        row["notes"].append(
            f"logits: ours vs HF f32 {row['rel_ours_f32']:.2e} / graph {row['rel_graph_f32']:.2e} "
            f"(bound {bound:.2e}), vs HF bf16 {row['rel_eager']:.2e} (bound {PAIR_TOL})"
        )
    for path in ("eager", "graph"):
        ours = row[f"ids_{path}"] or []
        at = first_divergence(ours, ref_ids)
        row[f"greedy_{path}"] = len(ref_ids) if at is None else at
        if at is None and len(ours) != len(ref_ids):
            at = min(len(ours), len(ref_ids))
            row[f"greedy_{path}"] = at
        if at is not None:
            ok = False
            if at < len(ours) and at < len(ref_ids):
                lg = logits_at(copy.deepcopy(model).to(device="cuda", dtype=torch.bfloat16),
                               prompt + ref_ids[:at])
                rms = float(lg.pow(2).mean().sqrt())
                gap = float(lg[ref_ids[at]] - lg[ours[at]]) / rms
                row["notes"].append(
                    f"{path} ids diverge at step {at}: ours {ours[at]}, transformers {ref_ids[at]}; "
                    f"transformers' own logits for the two differ by {gap:.4f} x RMS "
                    f"(margin there {margins[at]:.4f})"
                )
            else:
                row["notes"].append(
                    f"{path}: {len(ours)} ids against transformers' {len(ref_ids)} (EOS {sorted(eos)})"
                )
    row["status"] = "ok" if ok else "FAIL"
    return row


def build_tokenizer(folder, vocab_size):
    """A byte-level BPE tokenizer trained on TOKENIZER_CORPUS (special tokens <s> = 0 and
    </s> = 1, a BOS template), saved as folder/tokenizer.json; returns transformers' fast
    tokenizer on the same file."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TOKENIZER_CORPUS, trainer)
    if (tok.token_to_id("<s>"), tok.token_to_id("</s>")) != (0, 1):
        raise RuntimeError("special token ids are not 0 and 1")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)]
    )
    path = os.path.join(folder, "tokenizer.json")
    tok.save(path)
    return PreTrainedTokenizerFast(tokenizer_file=path, bos_token="<s>", eos_token="</s>")


def run_tokenizer_case(case, binary, work, min_margin, max_seeds, env):
    """Text in and out: our tokenizer ids, decoded texts and greedy ids against transformers'."""
    import torch

    name = case["name"]
    cfg = build_config(case)
    eos = eos_ids(cfg)
    folder = os.path.join(work, name)
    os.makedirs(folder, exist_ok=True)
    hf_tok = build_tokenizer(folder, 400)
    prompts = [hf_tok(t)["input_ids"] for t in TOKENIZER_TEXTS]
    chosen = None
    # Three prompts must all be free of near-ties: fewer steps, more seeds than the other cases.
    for seed in range(2 * max_seeds):
        model = make_model(cfg, seed)
        ref = copy.deepcopy(model).to(device="cuda", dtype=torch.bfloat16).eval()
        margins = [min(greedy(ref, p, TOKENIZER_STEPS, eos)[1]) for p in prompts]
        if chosen is None or min(margins) > min(chosen[2]):
            chosen = (seed, model, margins)
        if min(margins) >= min_margin:
            break
    seed, model, margins = chosen
    files = save(model, case, folder)  # after the tokenizer: save_pretrained keeps other files
    if not os.path.isfile(os.path.join(folder, "tokenizer.json")):
        build_tokenizer(folder, 400)
    ref = copy.deepcopy(model).to(device="cuda", dtype=torch.bfloat16).eval()
    row = dict(
        case=name, architecture=cfg.architectures[0] if cfg.architectures else "LlamaForCausalLM",
        dtype=case["dtype"], files=len(files), seed=seed, min_margin=min(margins), rope={},
        status="FAIL", notes=[], texts=[],
    )
    ok = True
    log_all = []
    for text, hf_ids in zip(TOKENIZER_TEXTS, prompts):
        cmd = [binary, "--model", folder, "--prompt", text, "--max-new-tokens", str(TOKENIZER_STEPS)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        log_all.append(" ".join(map(repr, cmd)) + "\n" + proc.stdout + proc.stderr)
        if proc.returncode != 0:
            row["notes"].append(f"{text!r}: decode_bench exit {proc.returncode}: "
                                f"{(proc.stdout + proc.stderr).strip().splitlines()[-1:]}")
            ok = False
            continue
        got = parse_output(proc.stdout)
        ref_ids = greedy(ref, hf_ids, TOKENIZER_STEPS, eos)[0]
        checks = {
            "prompt ids": got.get("prompt ids") == hf_ids,
            "prompt round trip": got.get("prompt text") == hf_tok.decode(hf_ids, skip_special_tokens=True),
            "text eager": got.get("text eager") == hf_tok.decode(got.get("ids eager", []), skip_special_tokens=True),
            "text graph": got.get("text graph") == hf_tok.decode(got.get("ids graph", []), skip_special_tokens=True),
            "greedy eager": got.get("ids eager") == ref_ids,
            "greedy graph": got.get("ids graph") == ref_ids,
        }
        # Where a greedy path diverges: how close transformers' own logits for the two ids were
        # (the seed was chosen for margins above --min-margin on every text and step).
        divergences = []
        for path in ("eager", "graph"):
            ours_ids = got.get(f"ids {path}") or []
            at = first_divergence(ours_ids, ref_ids)
            if at is not None and at < len(ours_ids) and at < len(ref_ids):
                lg = greedy_logits(ref, hf_ids + ref_ids[:at])
                rms = float(lg.pow(2).mean().sqrt())
                gap = float(lg[ref_ids[at]] - lg[ours_ids[at]]) / rms
                divergences.append(f"{path} diverges at step {at}: ours {ours_ids[at]}, transformers "
                                 f"{ref_ids[at]}; transformers' own logits for the two differ by "
                                 f"{gap:.4f} x RMS")
        row["texts"].append(dict(text=text, hf_ids=hf_ids, ours=got, ref_ids=ref_ids, checks=checks,
                                 divergences=divergences))
        for note in divergences:
            row["notes"].append(f"{text!r}: {note}")
        for what, good in checks.items():
            if not good:
                ok = False
                row["notes"].append(f"{text!r}: {what} differs: ours {got}, transformers ids {hf_ids}, greedy {ref_ids}")
    with open(os.path.join(work, f"{name}.log"), "w") as f:
        f.write("\n".join(log_all))
    row["greedy_eager"] = sum(t["checks"]["greedy eager"] for t in row["texts"])
    row["greedy_graph"] = sum(t["checks"]["greedy graph"] for t in row["texts"])
    row["status"] = "ok" if ok and len(row["texts"]) == len(TOKENIZER_TEXTS) else "FAIL"
    print(f"{name}: {len(row['texts'])} texts; checks per text: "
          + "; ".join(f"{t['text']!r}: {sum(t['checks'].values())}/{len(t['checks'])}" for t in row["texts"]))
    return row


def print_table(rows):
    print()
    print("| case | architecture | stored | files | seed | min top-2 margin | logits rel. err. eager / graph (vs HF bf16) | graph replays per prompt token (vs HF bf16) | ours vs HF f32 | HF bf16 vs HF f32 | greedy = HF (eager / graph, of 16) | tok/s eager / graph | result |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in rows:
        print(
            f"| {r['case']} | {r['architecture']} | {r['dtype']} | {r['files']} | {r['seed']} "
            f"| {r['min_margin']:.4f} | {fmt(r.get('rel_eager'), '.2e')} / {fmt(r.get('rel_graph'), '.2e')} "
            f"| {fmt(r.get('rel_graph_steps'), '.2e')} "
            f"| {fmt(r.get('rel_ours_f32'), '.2e')} | {fmt(r.get('rel_hf_bf16_f32'), '.2e')} "
            f"| {r.get('greedy_eager', '-')} / {r.get('greedy_graph', '-')} "
            f"| {fmt(r.get('tok_s_eager'), '.0f')} / {fmt(r.get('tok_s_graph'), '.0f')} | {r['status']} |"
        )
    for r in rows:
        for note in r["notes"]:
            print(f"- {r['case']}: {note}")
        print(f"- {r['case']}: config.json RoPE fields {json.dumps(r['rope'])}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binary", nargs="?", help="the decode_bench binary")
    ap.add_argument("--out", help="folder for logs and results.json (default: a temporary folder)")
    ap.add_argument("--cases", help="comma-separated case names (default: all)")
    ap.add_argument("--min-margin", type=float, default=0.05,
                    help="smallest acceptable top-2 logit margin / RMS on transformers' greedy path")
    ap.add_argument("--max-seeds", type=int, default=32)
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint folders")
    ap.add_argument("--self-test", action="store_true", help="test the pure-Python helpers and exit")
    args = ap.parse_args()
    if args.self_test:
        self_test()
        return 0
    if not args.binary:
        ap.error("the decode_bench binary is required")
    binary = os.path.abspath(args.binary)
    cases = CASES
    if args.cases:
        wanted = args.cases.split(",")
        cases = [c for c in CASES if c["name"] in wanted]
        if len(cases) != len(wanted):
            ap.error(f"unknown case in {wanted}; known: {[c['name'] for c in CASES]}")

    import torch
    import transformers

    if not torch.cuda.is_available():
        print("hf_check: no CUDA device visible to torch", file=sys.stderr)
        return 1
    env = dict(os.environ)
    dirs = lib_dirs()
    if dirs:
        env["LD_LIBRARY_PATH"] = ":".join(dirs + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    out = args.out or tempfile.mkdtemp(prefix="hf_check-")
    os.makedirs(out, exist_ok=True)
    work = out if args.keep else tempfile.mkdtemp(prefix="hf_check-models-")
    print(f"hf_check: torch {torch.__version__}, transformers {transformers.__version__}, "
          f"device {torch.cuda.get_device_name(0)}; prompt {PROMPT}, {STEPS} steps; "
          f"libraries from {dirs or 'the environment'}; logs in {out}")
    rows = []
    for case in cases:
        try:
            row = run_case(case, binary, work, args.min_margin, args.max_seeds, env)
        except Exception as e:  # report and go on with the other cases
            row = dict(case=case["name"], architecture=case["family"], dtype=case["dtype"], files=0,
                       seed=-1, min_margin=float("nan"), rope={}, status="FAIL",
                       notes=[f"{type(e).__name__}: {e}"])
        rows.append(row)
        print(f"{row['case']}: {row['status']}", flush=True)
        if work != out:
            for p in glob.glob(os.path.join(work, row["case"] + "*.log")):
                os.replace(p, os.path.join(out, os.path.basename(p)))
    if work != out:
        shutil.rmtree(work, ignore_errors=True)
    print_table(rows)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(rows, f, indent=2, default=str)
    failed = [r["case"] for r in rows if r["status"] != "ok"]
    print(f"\nhf_check: {len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
