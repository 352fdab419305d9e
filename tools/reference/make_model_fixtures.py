#!/usr/bin/env python3
"""Reference logits for dsv3's forward pass, made by HF transformers' DeepseekV3.

Run on the GPU machine (torch + transformers 5.x; the forward runs on the CPU in f32 so the
reference is exact f32 arithmetic, no TF32). For each small config below it:
  1. draws random weights in the DeepSeek-V3 HF checkpoint layout (MODEL_SPEC §7), with random
     norms and a non-zero e_score_correction_bias;
  2. stores them as dsv3 will read them: F32, BF16, or FP8 E4M3 with 128x128 block scales
     (dims not multiples of 128, so edge blocks are partial);
  3. loads the *dequantised* weights into transformers' DeepseekV3ForCausalLM through
     from_pretrained (failing on any missing or unexpected key) and saves its logits;
  4. computes the MTP module's logits with a PyTorch reference written from the spec
     (MODEL_SPEC §6) out of transformers' own decoder layer and norm.
Writes OUT/<name>/{config.json, model.safetensors, reference.safetensors}.
"""
import argparse
import json
import math
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import save_file

BASE = dict(
    model_type="deepseek_v3", architectures=["DeepseekV3ForCausalLM"], hidden_act="silu",
    rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=0,
    eos_token_id=1, attention_bias=False, attention_dropout=0.0, initializer_range=0.02,
    moe_layer_freq=1,
)

CONFIGS = {
    # V3-like: q_lora, YaRN with mscale != mscale_all_dim (cos/sin factor and softmax m^2 both
    # != 1), group-limited routing, a dense first layer, MTP, BF16 weights.
    "v3_yarn_qlora_bf16": dict(
        dtype="bf16", vocab_size=320, hidden_size=64, intermediate_size=128,
        moe_intermediate_size=32, num_hidden_layers=3, first_k_dense_replace=1,
        num_attention_heads=4, num_key_value_heads=4, q_lora_rank=48, kv_lora_rank=32,
        qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=8,
        n_shared_experts=1, num_experts_per_tok=2, n_group=4, topk_group=2,
        scoring_func="sigmoid", topk_method="noaux_tc", norm_topk_prob=True,
        routed_scaling_factor=2.5, max_position_embeddings=128,
        rope_scaling=dict(type="yarn", factor=4.0, original_max_position_embeddings=32,
                          beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=0.8),
        num_nextn_predict_layers=1),
    # No q_lora (plain q_proj), plain RoPE, plain routing (one group), all layers MoE, F32.
    "v3_plain_f32": dict(
        dtype="f32", vocab_size=256, hidden_size=48, intermediate_size=96,
        moe_intermediate_size=24, num_hidden_layers=2, first_k_dense_replace=0,
        num_attention_heads=3, num_key_value_heads=3, q_lora_rank=None, kv_lora_rank=24,
        qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12, n_routed_experts=6,
        n_shared_experts=1, num_experts_per_tok=3, n_group=1, topk_group=1,
        scoring_func="sigmoid", topk_method="noaux_tc", norm_topk_prob=True,
        routed_scaling_factor=1.5, max_position_embeddings=64, rope_scaling=None,
        num_nextn_predict_layers=1),
    # FP8 E4M3 projections with 128x128 block scales over dims that are not multiples of 128,
    # YaRN with V2-Lite's mscale 0.707 (factor 1 on cos/sin, m^2 != 1 on the softmax).
    "v3_fp8_blocks": dict(
        dtype="fp8", vocab_size=256, hidden_size=200, intermediate_size=264,
        moe_intermediate_size=72, num_hidden_layers=2, first_k_dense_replace=1,
        num_attention_heads=2, num_key_value_heads=2, q_lora_rank=136, kv_lora_rank=144,
        qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=4,
        n_shared_experts=2, num_experts_per_tok=2, n_group=2, topk_group=1,
        scoring_func="sigmoid", topk_method="noaux_tc", norm_topk_prob=True,
        routed_scaling_factor=2.5, max_position_embeddings=256,
        rope_scaling=dict(type="yarn", factor=8.0, original_max_position_embeddings=32,
                          beta_fast=32.0, beta_slow=1.0, mscale=0.707, mscale_all_dim=0.707),
        num_nextn_predict_layers=1),
    # DeepSeek-V2(-Lite) routing through transformers' DeepseekV2: softmax scores, greedy
    # top-k, no normalisation, no correction bias, two shared experts, no q_lora, no MTP.
    "v2_softmax_greedy_bf16": dict(
        dtype="bf16", model_type="deepseek_v2", architectures=["DeepseekV2ForCausalLM"],
        vocab_size=256, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
        num_hidden_layers=2, first_k_dense_replace=1, num_attention_heads=4,
        num_key_value_heads=4, q_lora_rank=None, kv_lora_rank=32, qk_nope_head_dim=16,
        qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=8, n_shared_experts=2,
        num_experts_per_tok=3, n_group=1, topk_group=1, scoring_func="softmax",
        topk_method="greedy", norm_topk_prob=False, routed_scaling_factor=1.0,
        max_position_embeddings=128,
        rope_scaling=dict(type="yarn", factor=4.0, original_max_position_embeddings=32,
                          beta_fast=32.0, beta_slow=1.0, mscale=0.707, mscale_all_dim=0.707),
        num_nextn_predict_layers=0),
}

B, T = 2, 12
GREEDY_PROMPT, GREEDY_NEW = 5, 10


def layout(c):
    """(name, shape, role) of every tensor, MODEL_SPEC §7."""
    h, nh = c["hidden_size"], c["num_attention_heads"]
    dqk = c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
    out = [("model.embed_tokens.weight", (c["vocab_size"], h), "embed")]

    def layer(i, mtp):
        p = f"model.layers.{i}."
        if mtp:
            out.extend([(p + "enorm.weight", (h,), "norm"), (p + "hnorm.weight", (h,), "norm"),
                        (p + "eh_proj.weight", (h, 2 * h), "proj"),
                        (p + "shared_head.norm.weight", (h,), "norm"),
                        (p + "shared_head.head.weight", (c["vocab_size"], h), "embed")])
        out.extend([(p + "input_layernorm.weight", (h,), "norm"),
                    (p + "post_attention_layernorm.weight", (h,), "norm")])
        a = p + "self_attn."
        if c["q_lora_rank"]:
            out.extend([(a + "q_a_proj.weight", (c["q_lora_rank"], h), "proj"),
                        (a + "q_a_layernorm.weight", (c["q_lora_rank"],), "norm"),
                        (a + "q_b_proj.weight", (nh * dqk, c["q_lora_rank"]), "proj")])
        else:
            out.append((a + "q_proj.weight", (nh * dqk, h), "proj"))
        out.extend([
            (a + "kv_a_proj_with_mqa.weight", (c["kv_lora_rank"] + c["qk_rope_head_dim"], h), "proj"),
            (a + "kv_a_layernorm.weight", (c["kv_lora_rank"],), "norm"),
            (a + "kv_b_proj.weight", (nh * (c["qk_nope_head_dim"] + c["v_head_dim"]), c["kv_lora_rank"]), "proj"),
            (a + "o_proj.weight", (h, nh * c["v_head_dim"]), "proj")])

        def mlp(q, inter):
            out.extend([(q + "gate_proj.weight", (inter, h), "proj"),
                        (q + "up_proj.weight", (inter, h), "proj"),
                        (q + "down_proj.weight", (h, inter), "proj")])
        if i < c["first_k_dense_replace"]:
            mlp(p + "mlp.", c["intermediate_size"])
            return
        out.append((p + "mlp.gate.weight", (c["n_routed_experts"], h), "router"))
        if c.get("topk_method", "noaux_tc") == "noaux_tc":
            out.append((p + "mlp.gate.e_score_correction_bias", (c["n_routed_experts"],), "bias"))
        for e in range(c["n_routed_experts"]):
            mlp(p + f"mlp.experts.{e}.", c["moe_intermediate_size"])
        mlp(p + "mlp.shared_experts.", c["moe_intermediate_size"] * c["n_shared_experts"])

    for i in range(c["num_hidden_layers"]):
        layer(i, False)
    for k in range(c["num_nextn_predict_layers"]):
        layer(c["num_hidden_layers"] + k, True)
    out.append(("model.norm.weight", (h,), "norm"))
    out.append(("lm_head.weight", (c["vocab_size"], h), "embed"))
    return out


def quantize_fp8(w):
    """E4M3 with one f32 scale per 128x128 block (amax / 448): returns (q, scale_inv, dequant)."""
    rows, cols = w.shape
    sr, sc = (rows + 127) // 128, (cols + 127) // 128
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    s = torch.empty(sr, sc, dtype=torch.float32)
    deq = torch.empty_like(w)
    for i in range(sr):
        for j in range(sc):
            blk = w[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
            amax = blk.abs().max().item()
            scale = amax / 448.0 if amax > 0 else 1.0
            qb = (blk / scale).to(torch.float8_e4m3fn)
            q[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = qb
            s[i, j] = scale
            deq[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = qb.to(torch.float32) * torch.tensor(scale, dtype=torch.float32)
    return q, s, deq


def make_weights(c, rng):
    """Returns (stored: tensors as dsv3 reads them, exact: the f32 values they mean)."""
    stored, exact = {}, {}
    for name, shape, role in layout(c):
        if role == "norm":
            w = 1.0 + 0.2 * rng.standard_normal(shape)
        elif role == "bias":
            w = rng.uniform(-0.05, 0.05, shape)  # keeps s + b > 0, where DeepSeek and HF agree
        elif role == "embed":
            w = 0.5 * rng.standard_normal(shape)
        else:
            w = rng.standard_normal(shape) / math.sqrt(shape[-1])
        w = torch.tensor(w, dtype=torch.float32)
        if role == "bias" or c["dtype"] == "f32":
            stored[name], exact[name] = w, w
        elif c["dtype"] == "fp8" and role == "proj":
            q, s, deq = quantize_fp8(w)
            stored[name], stored[name + "_scale_inv"], exact[name] = q, s, deq
        else:
            b = w.to(torch.bfloat16)
            stored[name], exact[name] = b, b.to(torch.float32)
    return stored, exact


def hf_config(c, num_layers=None, first_dense=None):
    j = dict(BASE)
    j.update({k: v for k, v in c.items() if k != "dtype"})
    if num_layers is not None:
        j["num_hidden_layers"] = num_layers
    if first_dense is not None:
        j["first_k_dense_replace"] = first_dense
    j["num_nextn_predict_layers"] = 0
    j["torch_dtype"] = "float32"
    return j


def load_hf(cfg_json, tensors):
    """transformers' DeepseekV3ForCausalLM from a checkpoint dir, refusing any key mismatch."""
    from transformers import AutoModelForCausalLM
    d = tempfile.mkdtemp()
    try:
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg_json, f)
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, "model.safetensors"),
                  metadata={"format": "pt"})
        model, info = AutoModelForCausalLM.from_pretrained(
            d, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    finally:
        shutil.rmtree(d)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise SystemExit(f"transformers did not load every weight: {bad}")
    return model.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    torch.manual_seed(0)
    import transformers
    print("transformers", transformers.__version__, "torch", torch.__version__)
    for idx, (name, c) in enumerate(CONFIGS.items()):
        if args.only and name != args.only:
            continue
        rng = np.random.default_rng(1000 + idx)
        stored, exact = make_weights(c, rng)
        L = c["num_hidden_layers"]
        main_w = {k: v for k, v in exact.items() if not k.startswith(f"model.layers.{L}.")}
        model = load_hf(hf_config(c), main_w)
        # The router bias is a buffer in HF: make sure it really came from the checkpoint.
        for i in range(c["first_k_dense_replace"] if c.get("topk_method", "noaux_tc") == "noaux_tc" else L, L):
            got = model.model.layers[i].mlp.gate.e_score_correction_bias
            want = exact[f"model.layers.{i}.mlp.gate.e_score_correction_bias"]
            assert torch.equal(got, want), f"layer {i}: correction bias not loaded"
        ids = torch.tensor(rng.integers(0, c["vocab_size"], (B, T)), dtype=torch.int64)
        with torch.no_grad():
            logits = model(input_ids=ids).logits.float()
            hidden = model.model(input_ids=ids).last_hidden_state.float()  # after the final norm

            # MTP (MODEL_SPEC §6) from the spec: h' = eh_proj([enorm(emb(t_{i+1})); hnorm(h_i)]),
            # then one transformer block (transformers' own MoE decoder layer, loaded from the
            # MTP layer's weights as layer 0 of a one-layer model), shared_head.norm, shared_head.head.
            p = f"model.layers.{L}."
            mtp_logits = None
        if c["num_nextn_predict_layers"] > 0:
          with torch.no_grad():
            mtp_w = {k.replace(p, "model.layers.0."): v for k, v in exact.items() if k.startswith(p)
                     and not any(s in k for s in ("enorm", "hnorm", "eh_proj", "shared_head"))}
            mtp_w["model.embed_tokens.weight"] = exact["model.embed_tokens.weight"]
            mtp_w["model.norm.weight"] = exact[p + "shared_head.norm.weight"]
            mtp_w["lm_head.weight"] = exact[p + "shared_head.head.weight"]
            block = load_hf(hf_config(c, num_layers=1, first_dense=0), mtp_w)
            eps = c.get("rms_norm_eps", 1e-6)

            def rms(x, w):
                return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
            emb = exact["model.embed_tokens.weight"][ids[:, 1:]]
            x = torch.cat([rms(emb, exact[p + "enorm.weight"]), rms(hidden[:, :-1], exact[p + "hnorm.weight"])], -1)
            x = x @ exact[p + "eh_proj.weight"].T
            mtp_logits = block(inputs_embeds=x).logits.float()
        with torch.no_grad():

            # transformers' own greedy generate (with its KV cache) from the first 5 tokens of
            # each row: the continuation dsv3's engine must reproduce. It may stop early at eos.
            greedy = model.generate(ids[:, :GREEDY_PROMPT], attention_mask=torch.ones_like(ids[:, :GREEDY_PROMPT]),
                                    max_new_tokens=GREEDY_NEW, do_sample=False, pad_token_id=0,
                                    eos_token_id=None)
            greedy = greedy[:, GREEDY_PROMPT:]

        od = os.path.join(args.out, name)
        os.makedirs(od, exist_ok=True)
        cfg = hf_config(c)
        cfg["num_nextn_predict_layers"] = c["num_nextn_predict_layers"]
        cfg["torch_dtype"] = "float32" if c["dtype"] == "f32" else "bfloat16"
        if c["dtype"] == "fp8":
            cfg["quantization_config"] = dict(quant_method="fp8", fmt="e4m3",
                                              activation_scheme="dynamic", weight_block_size=[128, 128])
        with open(os.path.join(od, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        save_file({k: v.contiguous() for k, v in stored.items()}, os.path.join(od, "model.safetensors"),
                  metadata={"format": "pt"})
        ref = {"input_ids": ids.to(torch.int32), "logits": logits.contiguous(),
               "greedy_tokens": greedy.to(torch.int32).contiguous()}
        if mtp_logits is not None:
            ref["mtp_logits"] = mtp_logits.contiguous()
        save_file(ref, os.path.join(od, "reference.safetensors"), metadata={"format": "pt"})
        print(f"{name}: logits {tuple(logits.shape)} std {logits.std().item():.4f}, "
              f"mtp {None if mtp_logits is None else tuple(mtp_logits.shape)}")


if __name__ == "__main__":
    sys.exit(main())
