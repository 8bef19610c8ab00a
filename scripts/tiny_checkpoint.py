#!/usr/bin/env python3
"""Writes a small random-weight Qwen3 checkpoint folder with transformers (config.json +
safetensors), for `serve_bench --model DIR` on a machine with no checkpoint to hand.

    python3 scripts/tiny_checkpoint.py DIR [--seed N]
"""
import argparse

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

parser = argparse.ArgumentParser()
parser.add_argument("dir")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
torch.manual_seed(args.seed)
cfg = Qwen3Config(
    vocab_size=4096,
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=4096,
    tie_word_embeddings=True,
    torch_dtype="bfloat16",
)
model = Qwen3ForCausalLM(cfg).to(torch.bfloat16)
model.save_pretrained(args.dir, safe_serialization=True)
print(f"wrote a random Qwen3 checkpoint ({sum(p.numel() for p in model.parameters())} parameters) to {args.dir}")
