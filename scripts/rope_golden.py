# Golden RoPE frequencies from transformers' own functions (modeling_rope_utils), for the host
# unit test of the loader and RopeScaling::inv_freq (models/src/hf/testdata/rope_golden.json):
#   python3 scripts/rope_golden.py > models/src/hf/testdata/rope_golden.json   (needs torch, transformers)
import json, torch, transformers
from transformers import LlamaConfig, Qwen3Config
import transformers.modeling_rope_utils as m

out = {"transformers": transformers.__version__, "cases": []}
def case(name, cfg, fn, seq_len=None, **extra):
    inv, attn = fn(cfg, "cpu", seq_len=seq_len) if seq_len is not None else fn(cfg, "cpu")
    out["cases"].append(dict(name=name, inv_freq=[float(x) for x in inv.float()], attention_factor=float(attn),
                             seq_len=seq_len, **extra))

c = LlamaConfig(hidden_size=4096, num_attention_heads=32, max_position_embeddings=131072,
                rope_parameters=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                     original_max_position_embeddings=8192, rope_theta=500000.0))
case("llama3_3_1", c, m._compute_llama3_parameters, theta=500000.0, head_dim=128)
c = Qwen3Config(head_dim=128, max_position_embeddings=131072,
                rope_parameters=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=32768, rope_theta=1e6))
case("yarn_qwen3", c, m._compute_yarn_parameters, theta=1e6, head_dim=128,
     yarn=dict(factor=4.0, original=32768))
c = Qwen3Config(head_dim=64, max_position_embeddings=163840,
                rope_parameters=dict(rope_type="yarn", factor=40.0, original_max_position_embeddings=4096, rope_theta=10000.0,
                                     mscale=0.707, mscale_all_dim=1.0, truncate=False, beta_fast=16, beta_slow=2))
case("yarn_mscale_untruncated", c, m._compute_yarn_parameters, theta=10000.0, head_dim=64,
     yarn=dict(factor=40.0, original=4096, mscale=0.707, mscale_all_dim=1.0, truncate=False, beta_fast=16, beta_slow=2))
c = LlamaConfig(hidden_size=2048, num_attention_heads=32, max_position_embeddings=2048,
                rope_parameters=dict(rope_type="dynamic", factor=2.0, rope_theta=10000.0))
case("dynamic_4096", c, m._compute_dynamic_ntk_parameters, seq_len=torch.tensor(4096), theta=10000.0, head_dim=64,
     factor=2.0, original=2048)
c = LlamaConfig(hidden_size=2048, num_attention_heads=32, max_position_embeddings=2048,
                rope_parameters=dict(rope_type="linear", factor=4.0, rope_theta=10000.0))
case("linear_4", c, m._compute_linear_scaling_rope_parameters, theta=10000.0, head_dim=64, factor=4.0)
for cse in out["cases"]:
    if isinstance(cse["seq_len"], torch.Tensor): cse["seq_len"] = int(cse["seq_len"])
print(json.dumps(out))
