#!/usr/bin/env python3
"""Reference processed logits for dsv3's token sampler (src/infer/sampler.h), made by HF
transformers' own logits processors.

Run on the GPU machine (torch + transformers 5.x; everything runs on the CPU in float32, as
transformers' processors do). For ~40 random logit vectors (vocabularies of 50..5000 entries,
some with planted ties, extreme values and -inf entries) and parameter combinations it applies,
in this order:
  RepetitionPenaltyLogitsProcessor (over prompt + generated ids),
  frequency/presence penalties (OpenAI formula over generated ids, written here in float64:
    logit -= frequency * count + presence * [count > 0]),
  TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, MinPLogitsWarper,
and stores the processed logits of the kept tokens (every other token is -inf) and the float64
log-softmax of those float32 processed logits. Temperature 0 (greedy) cases apply the penalties
only and store torch.argmax as well.

Boundary robustness: dsv3 computes the same decisions with its own float32/float64 arithmetic,
so a token whose fate depends on the last bit (a top-k value within 1e-5 of the k-th, a top-p
cumulative mass within 2e-4 of p -- transformers sums float32 probabilities over up to 5000
entries --, a min-p ratio within 1e-4 of min_p in log space, or exact ties that straddle the
top-p boundary, where the order transformers' sort gives to equal values is not specified) would
make the comparison test flaky. Such draws are rejected here and redrawn. Each case also records
how many tokens an independent float64 implementation of the documented rules (the rules dsv3
implements) decides differently from transformers; it must be 0.

Logits are stored as integers `raw` with logit = raw / 4096: exact in float32, short in JSON,
and ties are easy to plant. -inf entries are listed in `neg_inf`.

Also writes known-answer values of the seeded generator (splitmix64 seeding a xoshiro256**,
written here from the published algorithms with Python integers) so the C++ generator is
checked against a second implementation.

Usage: python3 tools/reference/make_sampler_fixtures.py --out OUTDIR  (writes OUTDIR/processed.json)
"""
import argparse
import json
import math
import os
from collections import Counter

import numpy as np
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

SCALE = 4096
NUM_CASES = 40
MAX_BYTES = 1_000_000
TOPK_MARGIN = 1e-5
TOPP_MARGIN = 2e-4
MINP_MARGIN = 1e-4
M64 = (1 << 64) - 1


# --- generator known answers (must match dsv3::infer::Rng) ------------------------------------
def splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return state, z ^ (z >> 31)


def rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & M64


class Xoshiro256ss:
    def __init__(self, seed, stream):
        # dsv3's documented seeding: the stream index is mixed into the seed by one splitmix64
        # output, then four splitmix64 outputs fill the state.
        _, h = splitmix64(stream)
        st = seed ^ h
        self.s = []
        for _ in range(4):
            st, z = splitmix64(st)
            self.s.append(z)

    def next(self):
        s = self.s
        result = (rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return result


def rng_fixtures():
    out = []
    for seed, stream in [(0, 0), (42, 0), (42, 1), (0xDEADBEEFCAFEF00D, 7), (M64, 3)]:
        g = Xoshiro256ss(seed, stream)
        vals = [g.next() for _ in range(6)]
        out.append(dict(seed=str(seed), stream=stream, u64=[str(v) for v in vals],
                        uniform=[(v >> 11) * 2.0 ** -53 for v in vals]))
    return out


# --- random cases ------------------------------------------------------------------------------
KINDS = ["normal", "peaked", "ties", "extreme", "neginf"]


def draw_logits(rng, V, kind):
    if kind == "normal":
        x = rng.normal(0.0, float(rng.choice([1.0, 2.5, 5.0])), V)
    elif kind == "peaked":
        x = rng.normal(0.0, 1.5, V)
        idx = rng.choice(V, 3, replace=False)
        x[idx] += rng.uniform(5.0, 14.0, 3)
    elif kind == "ties":
        # Coarse grid: many exact ties, including among the largest values.
        x = rng.integers(-16, 17, V) / 2.0
    elif kind == "extreme":
        x = rng.normal(0.0, 3.0, V)
        idx = rng.choice(V, 6, replace=False)
        x[idx] = rng.choice([-300.0, -120.0, 60.0, 95.0, 150.0, 250.0], 6)
    else:  # neginf: -inf entries are added below
        x = rng.normal(0.0, 2.0, V)
    raw = np.round(x * SCALE).astype(np.int64)
    neg_inf = []
    if kind == "neginf":
        n = int(V * rng.uniform(0.05, 0.5))
        neg_inf = sorted(int(i) for i in rng.choice(V, n, replace=False))
    elif rng.random() < 0.2:
        neg_inf = sorted(int(i) for i in rng.choice(V, max(1, V // 20), replace=False))
    return raw, neg_inf


def draw_params(rng, i):
    p = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
             frequency_penalty=0.0, presence_penalty=0.0)
    if i < 4:  # greedy, with penalties in some
        p["temperature"] = 0.0
        if i >= 2:
            p["repetition_penalty"] = [1.3, 0.7][i % 2]
            p["frequency_penalty"] = 0.5
            p["presence_penalty"] = [0.0, -0.4][i % 2]
        return p
    single = [
        dict(temperature=0.7), dict(top_k=1), dict(top_k=7), dict(top_k=50), dict(top_p=0.5),
        dict(top_p=0.9), dict(min_p=0.05), dict(min_p=0.2), dict(repetition_penalty=1.3),
        dict(repetition_penalty=0.8), dict(frequency_penalty=0.6, presence_penalty=0.3),
        dict(top_k=100000),
    ]
    if i - 4 < len(single):
        p.update(single[i - 4])
        return p
    p["temperature"] = float(rng.choice([0.3, 0.6, 0.8, 1.0, 1.3, 2.0]))
    if rng.random() < 0.6:
        p["top_k"] = int(rng.choice([1, 3, 10, 40, 200, 1000]))
    if rng.random() < 0.6:
        p["top_p"] = float(rng.choice([0.3, 0.7, 0.8, 0.9, 0.95, 0.99]))
    if rng.random() < 0.5:
        p["min_p"] = float(rng.choice([0.01, 0.05, 0.1, 0.3]))
    if rng.random() < 0.5:
        p["repetition_penalty"] = float(rng.choice([0.85, 1.1, 1.3, 2.0]))
    if rng.random() < 0.5:
        p["frequency_penalty"] = float(rng.choice([-0.5, 0.2, 0.8, 1.5]))
        p["presence_penalty"] = float(rng.choice([0.0, -0.3, 0.4, 1.2]))
    return p


def filters_heavily(p):
    return p["temperature"] == 0.0 or (0 < p["top_k"] <= 1000) or p["top_p"] < 0.95 or \
        p["min_p"] >= 0.05


def draw_history(rng, raw, V):
    top = np.argsort(-raw, kind="stable")[:10]
    pool = np.concatenate([top, rng.choice(V, 6)])
    prompt = [int(t) for t in rng.choice(pool, int(rng.integers(0, 20)))]
    prompt += [int(t) for t in rng.integers(0, V, int(rng.integers(0, 10)))]
    generated = [int(t) for t in rng.choice(pool, int(rng.integers(0, 25)))]
    return prompt, generated


# --- float64 re-derivation of the documented rules ---------------------------------------------
def near(a, b, rel):
    return abs(a - b) <= rel * max(1.0, abs(b))


def f64_topk(x, k):
    """Kept mask and whether a value sits within TOPK_MARGIN of the k-th largest."""
    fin = np.isfinite(x)
    if k <= 0 or k >= x.size or fin.sum() <= k:
        return fin.copy(), True
    kth = np.sort(x)[::-1][k - 1]
    keep = x >= kth
    robust = not any(near(v, kth, TOPK_MARGIN) and v != kth for v in x[fin])
    return keep, robust


def f64_topp(x, top_p):
    fin = np.isfinite(x)
    if top_p >= 1.0:
        return fin.copy(), True
    idx = np.flatnonzero(fin)
    order = idx[np.lexsort((idx, -x[idx]))]  # value descending, then id ascending
    w = np.exp(x[order] - x[order[0]])
    z = w.sum()
    before = np.concatenate([[0.0], np.cumsum(w)[:-1]]) / z
    keep_sorted = before < top_p
    keep_sorted[0] = True
    keep = np.zeros(x.size, dtype=bool)
    keep[order[keep_sorted]] = True
    robust = not np.any(np.abs(before[1:] - top_p) <= TOPP_MARGIN)
    for v in np.unique(x[order]):  # exact ties straddling the boundary
        grp = keep[order][x[order] == v]
        if grp.any() and not grp.all():
            robust = False
    return keep, robust


def f64_minp(x, min_p):
    fin = np.isfinite(x)
    if min_p <= 0.0:
        return fin.copy(), True
    m = x[fin].max()
    ratio_log = x[fin] - m
    keep = np.zeros(x.size, dtype=bool)
    keep[np.flatnonzero(fin)] = np.exp(ratio_log) >= min_p
    robust = not np.any(np.abs(ratio_log - math.log(min_p)) <= MINP_MARGIN)
    return keep, robust


def hf_process(raw, neg_inf, prompt, generated, p):
    V = raw.size
    scores = (torch.tensor(raw, dtype=torch.float32) / SCALE)[None]
    if neg_inf:
        scores[0, neg_inf] = -math.inf
    ids = torch.tensor([prompt + generated], dtype=torch.long)
    if p["repetition_penalty"] != 1.0 and ids.numel() > 0:
        scores = RepetitionPenaltyLogitsProcessor(penalty=float(p["repetition_penalty"]))(
            ids, scores)
    if (p["frequency_penalty"] != 0.0 or p["presence_penalty"] != 0.0) and generated:
        pen = np.zeros(V)
        for t, c in Counter(generated).items():
            pen[t] = p["frequency_penalty"] * c + p["presence_penalty"]
        scores = (scores.double() - torch.tensor(pen)[None]).float()
    stages = {}
    argmax = None
    if p["temperature"] == 0.0:
        argmax = int(torch.argmax(scores[0]))
    else:
        if p["temperature"] != 1.0:
            scores = TemperatureLogitsWarper(float(p["temperature"]))(ids, scores)
        stages["tempered"] = scores[0].double().numpy().copy()
        if p["top_k"] > 0:
            scores = TopKLogitsWarper(top_k=int(p["top_k"]))(ids, scores)
        stages["top_k"] = scores[0].double().numpy().copy()
        if p["top_p"] < 1.0:
            scores = TopPLogitsWarper(top_p=float(p["top_p"]))(ids, scores)
        stages["top_p"] = scores[0].double().numpy().copy()
        if p["min_p"] > 0.0:
            scores = MinPLogitsWarper(min_p=float(p["min_p"]))(ids, scores)
    out = scores[0]
    logsm = torch.log_softmax(out.double(), dim=-1).numpy()
    return out.numpy().copy(), logsm, stages, argmax


def check_rules(p, stages, final):
    """(robust, number of tokens where the float64 rules disagree with transformers)."""
    if p["temperature"] == 0.0:
        return True, 0
    robust = True
    mismatches = 0
    keep_k, r = f64_topk(stages["tempered"], p["top_k"])
    robust &= r
    mismatches += int(np.sum(keep_k != np.isfinite(stages["top_k"])))
    keep_p, r = f64_topp(stages["top_k"], p["top_p"])
    robust &= r
    mismatches += int(np.sum(keep_p != np.isfinite(stages["top_p"])))
    keep_m, r = f64_minp(stages["top_p"], p["min_p"])
    robust &= r
    mismatches += int(np.sum(keep_m != np.isfinite(final)))
    return robust, mismatches


def f32_repr(v):
    return float(str(np.float32(v)))


def make_case(rng, i):
    p = draw_params(rng, i)
    kind = KINDS[i % len(KINDS)]
    for attempt in range(60):
        lo, hi = (50, 5000) if filters_heavily(p) else (50, 600)
        V = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
        raw, neg_inf = draw_logits(rng, V, kind)
        if kind == "ties" and p["temperature"] == 0.0:
            raw[int(rng.integers(0, V))] = raw.max()  # a tie at the maximum
        prompt, generated = draw_history(rng, raw, V)
        # History tokens that are -inf stay -inf; keep them anyway (the penalties must cope).
        final, logsm, stages, argmax = hf_process(raw, neg_inf, prompt, generated, p)
        robust, mismatches = check_rules(p, stages, final)
        if not np.isfinite(final).any():
            continue
        if robust:
            break
    kept = [int(t) for t in np.flatnonzero(np.isfinite(final))]
    case = dict(name=f"case{i:02d}_{kind}", vocab=V, scale=SCALE, raw=[int(v) for v in raw],
                neg_inf=neg_inf, prompt=prompt, generated=generated, params=p, kept=kept,
                processed=[f32_repr(final[t]) for t in kept],
                logsoftmax=[float(f"{logsm[t]:.10g}") for t in kept],
                robust=bool(robust), rule_mismatches=mismatches, attempts=attempt + 1)
    if argmax is not None:
        case["argmax"] = argmax
    print(f"{case['name']}: V={V} kept={len(kept)} attempts={attempt + 1} robust={robust} "
          f"mismatches={mismatches} params={p}", flush=True)
    return case


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import transformers
    print("torch", torch.__version__, "transformers", transformers.__version__, flush=True)
    torch.set_num_threads(1)
    rng = np.random.default_rng(20261125)
    cases = [make_case(rng, i) for i in range(NUM_CASES)]
    doc = dict(generator=f"tools/reference/make_sampler_fixtures.py, transformers "
                         f"{transformers.__version__}, torch {torch.__version__}",
               rng=rng_fixtures(), cases=cases)
    text = json.dumps(doc, separators=(",", ":"))
    while len(text) > MAX_BYTES:  # drop the biggest case until it fits
        big = max(range(len(doc["cases"])), key=lambda j: len(doc["cases"][j]["raw"]))
        print("dropping", doc["cases"][big]["name"], "to stay under", MAX_BYTES, "bytes")
        del doc["cases"][big]
        text = json.dumps(doc, separators=(",", ":"))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "processed.json"), "w") as f:
        f.write(text + "\n")
    print("wrote", len(doc["cases"]), "cases,", len(text), "bytes;",
          "non-robust:", sum(not c["robust"] for c in doc["cases"]),
          "rule mismatches:", sum(c["rule_mismatches"] for c in doc["cases"]))


if __name__ == "__main__":
    main()
