#!/usr/bin/env python3
"""torch.optim.AdamW trajectories for dsv3's optimizer test (tests/test_optimizer.cpp).

Random parameters and a fixed sequence of random gradients, 6 steps with a changing learning
rate and a gradient scale (clipping), for a decayed and an undecayed tensor; float64 so the
reference is exact. Writes OUT/adamw.json.
"""
import argparse
import json
import os

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    n = 257
    p_dec = torch.randn(n, generator=g, dtype=torch.float64)
    p_nod = torch.randn(n, generator=g, dtype=torch.float64)
    grads = [(torch.randn(n, generator=g, dtype=torch.float64) * 0.1,
              torch.randn(n, generator=g, dtype=torch.float64) * 0.1) for _ in range(6)]
    lrs = [1e-3, 2e-3, 3e-3, 3e-3, 2e-3, 1e-3]
    scales = [1.0, 0.5, 1.0, 0.25, 1.0, 1.0]
    init = (p_dec.tolist(), p_nod.tolist())
    pd = torch.nn.Parameter(p_dec.clone())
    pn = torch.nn.Parameter(p_nod.clone())
    opt = torch.optim.AdamW([{"params": [pd], "weight_decay": 0.1},
                             {"params": [pn], "weight_decay": 0.0}],
                            lr=lrs[0], betas=(0.9, 0.95), eps=1e-8)
    traj = []
    for (gd, gn), lr, s in zip(grads, lrs, scales):
        for group in opt.param_groups:
            group["lr"] = lr
        pd.grad = gd * s
        pn.grad = gn * s
        opt.step()
        traj.append((pd.detach().tolist(), pn.detach().tolist()))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "adamw.json"), "w") as f:
        json.dump({"torch": torch.__version__, "betas": [0.9, 0.95], "eps": 1e-8,
                   "weight_decay": 0.1, "init": init,
                   "grads": [(x.tolist(), y.tolist()) for x, y in grads],
                   "lrs": lrs, "scales": scales, "trajectory": traj}, f)


if __name__ == "__main__":
    main()
