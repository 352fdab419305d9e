#!/usr/bin/env python3
"""Does HF transformers load a checkpoint that `dsv3 train` wrote, and compute the logits dsv3
computes from it? (Issue 5: training checkpoints are plain DeepSeek-V3 HF model directories.)

  dsv3 forward --model CKPT --input ids.safetensors --output logits.safetensors   # on any machine
  check_hf_load.py --model CKPT --input ids.safetensors --logits logits.safetensors

Loads CKPT with AutoModelForCausalLM.from_pretrained (F32, eager attention); the only keys it
may skip are the MTP layer's (transformers' DeepseekV3 has no MTP module). Fails unless
max|dsv3 − HF| / std(HF) <= 1e-4.
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--logits", required=True)
    a = ap.parse_args()
    from transformers import AutoModelForCausalLM
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    model, info = AutoModelForCausalLM.from_pretrained(
        a.model, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    mtp = f"model.layers.{cfg['num_hidden_layers']}."
    bad = {k: [n for n in v if not (k == "unexpected_keys" and n.startswith(mtp))]
           for k, v in info.items() if v}
    bad = {k: v for k, v in bad.items() if v}
    if bad:
        raise SystemExit(f"transformers did not load the checkpoint cleanly: {bad}")
    ids = load_file(a.input)["input_ids"].to(torch.int64)
    ours = load_file(a.logits)["logits"].to(torch.float32)
    with torch.no_grad():
        ref = model.eval()(input_ids=ids).logits.float()
    err = (ours - ref).abs().max().item() / ref.std().item()
    print(f"{a.model}: HF loaded it ({len(info.get('unexpected_keys', []))} MTP tensors skipped); "
          f"logits max|dsv3 - HF| / std = {err:.2e}")
    return 0 if err <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
