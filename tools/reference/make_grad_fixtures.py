#!/usr/bin/env python3
"""Loss and parameter gradients of a fixture checkpoint by PyTorch autograd, for dsv3's
hand-written backward (issue 5): HF transformers' DeepseekV3ForCausalLM for the main model and
the MTP module from the spec (MODEL_SPEC §6) built from transformers' own decoder layer, as in
make_model_fixtures.py. Everything in float32 on the CPU.

Loss, with ids [B, T]:
  L_main = mean CE(logits[:, :-1], ids[:, 1:])
  L_mtp  = mean CE(mtp_logits[:, :-1], ids[:, 2:])   (mtp row i predicts token i + 2)
  L      = L_main + LAMBDA * L_mtp
Writes OUT/grads_<fixture>.safetensors: input_ids, loss_main, loss_mtp, and grad.<name> for
every tensor of the checkpoint that is a parameter (norms, projections, router, embeddings,
heads; the router bias gets none), in the checkpoint's own names and shapes.
"""
import argparse
import json
import os
import re
import sys

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_model_fixtures  # noqa: E402

LAMBDA = 0.3


def load_hf(cfg, tensors):
    # The loader of make_model_fixtures.py (refuses any key mismatch), in training mode.
    return make_model_fixtures.load_hf(cfg, tensors).train()


def per_expert_grads(model, prefix_map, originals):
    """Gradients under checkpoint names. transformers may fuse experts into stacked tensors
    (e.g. experts.gate_up_proj [E, 2I, H]); the fused layout is found by matching the loaded
    values against the checkpoint's per-expert tensors."""
    out = {}
    for name, p in model.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        ck = prefix_map(name)
        if ck is None:
            continue
        if ck in originals:
            out[ck] = g.detach().clone()
            continue
        m = re.match(r"(.*mlp\.experts)\.(gate_up_proj|down_proj|gate_proj|up_proj)$", ck)
        if not m:
            raise SystemExit(f"no checkpoint name for parameter {name} ({ck})")
        base, kind = m.groups()
        E = p.shape[0]
        for e in range(E):
            if kind == "gate_up_proj":
                gate, up = originals[f"{base}.{e}.gate_proj.weight"], originals[f"{base}.{e}.up_proj.weight"]
                cand = [(p[e], g[e])] + ([(p[e].T, g[e].T)] if p[e].dim() == 2 else [])
                done = False
                for val, grad in cand:
                    I = gate.shape[0]
                    if val.shape[0] == 2 * I and torch.equal(val[:I], gate) and torch.equal(val[I:], up):
                        out[f"{base}.{e}.gate_proj.weight"] = grad[:I].clone()
                        out[f"{base}.{e}.up_proj.weight"] = grad[I:].clone()
                        done = True
                        break
                if not done:
                    raise SystemExit(f"cannot map fused {name} back to gate/up of expert {e}")
            else:
                ref = originals[f"{base}.{e}.{kind}.weight"]
                if torch.equal(p[e], ref):
                    out[f"{base}.{e}.{kind}.weight"] = g[e].clone()
                elif torch.equal(p[e].T, ref):
                    out[f"{base}.{e}.{kind}.weight"] = g[e].T.clone()
                else:
                    raise SystemExit(f"cannot map fused {name} back to expert {e}")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixture", required=True, help="tests/fixtures/models/<name>")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    name = os.path.basename(a.fixture.rstrip("/"))
    cfg = json.load(open(os.path.join(a.fixture, "config.json")))
    assert "quantization_config" not in cfg, "use a BF16 or F32 fixture"
    ck = {k: v.to(torch.float32) for k, v in load_file(os.path.join(a.fixture, "model.safetensors")).items()}
    ids = load_file(os.path.join(a.fixture, "reference.safetensors"))["input_ids"].to(torch.int64)
    L = cfg["num_hidden_layers"]
    p = f"model.layers.{L}."
    main_cfg = dict(cfg, num_nextn_predict_layers=0)
    main_w = {k: v for k, v in ck.items() if not k.startswith(p)}
    model = load_hf(main_cfg, main_w)
    blk_cfg = dict(cfg, num_hidden_layers=1, first_k_dense_replace=0, num_nextn_predict_layers=0)
    blk_w = {k.replace(p, "model.layers.0."): v for k, v in ck.items() if k.startswith(p)
             and not any(s in k for s in ("enorm", "hnorm", "eh_proj", "shared_head"))}
    blk_w["model.embed_tokens.weight"] = ck["model.embed_tokens.weight"]
    blk_w["model.norm.weight"] = ck[p + "shared_head.norm.weight"]
    blk_w["lm_head.weight"] = ck[p + "shared_head.head.weight"]
    block = load_hf(blk_cfg, blk_w)
    extra = {k: ck[p + k].clone().requires_grad_(True) for k in ("enorm.weight", "hnorm.weight", "eh_proj.weight")}
    eps = cfg.get("rms_norm_eps", 1e-6)

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    ce = torch.nn.functional.cross_entropy
    V = cfg["vocab_size"]
    out = model.model(input_ids=ids)
    hidden = out.last_hidden_state
    logits = model.lm_head(hidden)
    loss_main = ce(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
    emb = model.model.embed_tokens(ids[:, 1:])  # shared embedding: its gradient collects both uses
    x = torch.cat([rms(emb, extra["enorm.weight"]), rms(hidden[:, :-1], extra["hnorm.weight"])], -1)
    x = x @ extra["eh_proj.weight"].T
    mtp_logits = block(inputs_embeds=x).logits
    loss_mtp = ce(mtp_logits[:, :-1].reshape(-1, V), ids[:, 2:].reshape(-1))
    (loss_main + LAMBDA * loss_mtp).backward()

    grads = per_expert_grads(model, lambda n: n, ck)

    def blk_name(n):
        if n.startswith("model.layers.0."):
            return n.replace("model.layers.0.", p)
        if n == "model.norm.weight":
            return p + "shared_head.norm.weight"
        if n == "lm_head.weight":
            return p + "shared_head.head.weight"
        return None  # the block model's own embedding copy is unused (inputs_embeds)
    grads.update(per_expert_grads(block, blk_name, ck))
    for k, v in extra.items():
        grads[p + k] = v.grad.detach().clone()
    missing = [k for k in ck if k not in grads and not k.endswith("e_score_correction_bias")]
    if missing:
        raise SystemExit(f"no gradient for {missing}")
    os.makedirs(a.out, exist_ok=True)
    tensors = {"input_ids": ids.to(torch.int32), "loss_main": loss_main.detach().reshape(1),
               "loss_mtp": loss_mtp.detach().reshape(1), "lambda": torch.tensor([LAMBDA])}
    tensors.update({"grad." + k: v.contiguous() for k, v in grads.items()})
    save_file(tensors, os.path.join(a.out, f"grads_{name}.safetensors"), metadata={"format": "pt"})
    print(f"{name}: loss_main {loss_main.item():.6f} loss_mtp {loss_mtp.item():.6f}, {len(grads)} gradients")


if __name__ == "__main__":
    sys.exit(main())
