#!/usr/bin/env python3
"""`dsv3 serve --device cuda` on a GPU machine (issue 8; run by tools/gpu/run_issue8.sh).

Starts the real server on the CUDA engine twice, with --batch-invariant and without, and checks
over HTTP with nothing but the standard library (the GPU machine has no npm):
  - with --batch-invariant, concurrent greedy /v1/completions (batched on the GPU) each give the
    token ids that `dsv3 generate --device cuda --batch-invariant` gives the same prompt alone;
    without it (batches on the tensor cores, ~1e-5 of the logits), how many do: reported, not
    required;
  - a streamed request (alone in the batch) gives the ids of generate alone, in both modes;
  - the same ids as the CPU engine (`dsv3 generate --device cpu`), where logit margins allow:
    reported, not required (prefill of longer prompts runs BF16 tensor cores on the GPU);
  - a prompt over --max-model-len is a 400 with code context_length_exceeded;
  - after the requests the cache budget is back to 0 (metrics), and SIGTERM exits 0.
Exit status 1 on any failed requirement.
"""
import argparse
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a land far away,",
    "1, 2, 3, 4, 5,",
    "DeepSeek-V3 uses multi-head latent attention because",
    "Hello",
]
N = 24


def generate_ids(a, prompt, device, flags=()):
    out = subprocess.run(
        [a.dsv3, "generate", "--model", a.model, "--tokenizer", a.tokenizer, "--prompt", prompt,
         "-n", str(N), "-t", "0", "--print-ids", "--device", device, *flags],
        check=True, capture_output=True, text=True, timeout=120).stdout
    return [int(t) for t in out.strip().split("\n")[-1].split()]


def post(url, path, body, timeout=120):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def completion_ids(url, prompt):
    status, text = post(url, "/v1/completions", {
        "model": "m", "prompt": prompt, "max_tokens": N, "temperature": 0,
        "return_token_ids": True})
    assert status == 200, (status, text)
    return json.loads(text)["choices"][0]["token_ids"]


def streamed_ids(url, prompt):
    status, text = post(url, "/v1/completions", {
        "model": "m", "prompt": prompt, "max_tokens": N, "temperature": 0, "stream": True,
        "return_token_ids": True})
    assert status == 200, (status, text)
    ids = []
    for line in text.split("\n"):
        if line.startswith("data: ") and line != "data: [DONE]":
            for c in json.loads(line[6:]).get("choices", []):
                ids += c.get("token_ids", [])
    return ids


def metric(url, name):
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        for line in r.read().decode().split("\n"):
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def serve_checks(a, flags, alone, cpu, require_alone, failures):
    """One server run with `flags`: the checks of the docstring, failures appended."""
    mode = " ".join(flags) or "default"
    port_file = os.path.join(tempfile.mkdtemp(), "port")
    name = "serve_cuda_invariant.log" if flags else "serve_cuda.log"
    log = open(os.path.join(os.environ.get("OUT", "/tmp"), name), "w")
    server = subprocess.Popen(
        [a.dsv3, "serve", "--model", a.model, "--tokenizer", a.tokenizer, "--device", a.device,
         "--port", "0", "--port-file", port_file, "--max-seqs", "8", "--max-model-len", "256",
         "--served-model-name", "m", *flags], stdout=log, stderr=log)
    url = None
    for _ in range(600):
        if server.poll() is not None:
            print(f"FAIL: dsv3 serve --device {a.device} {mode} exited at start; log:")
            print(open(log.name).read())
            failures.append(f"{mode}: server exited at start")
            return
        if os.path.exists(port_file):
            url = f"http://127.0.0.1:{open(port_file).read().strip()}"
            try:
                urllib.request.urlopen(url + "/health", timeout=5)
                break
            except OSError:
                pass
        time.sleep(0.1)

    def check(ok, what, detail=""):
        print(f"  {'ok  ' if ok else 'FAIL'} {what}{'' if ok else detail}")
        if not ok:
            failures.append(f"{mode}: {what}{detail}")

    try:
        t0 = time.time()
        with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
            batched = dict(zip(PROMPTS, pool.map(lambda q: completion_ids(url, q), PROMPTS)))
        print(f"serve {mode}: {len(PROMPTS)} concurrent requests in {time.time() - t0:.2f} s")
        for q in PROMPTS:
            ok = batched[q] == alone[q]
            if require_alone:
                check(ok, f"batched == generate alone {q!r}", f" ({batched[q]} vs {alone[q]})")
            print(f"  {'    ' if require_alone else 'info'} == generate alone: {ok}; == cpu: "
                  f"{batched[q] == cpu[q]}  {q!r}")
        same = sum(batched[q] == alone[q] for q in PROMPTS)
        print(f"  batched == generate alone on {same}/{len(PROMPTS)} prompts, == CPU on "
              f"{sum(batched[q] == cpu[q] for q in PROMPTS)}/{len(PROMPTS)}")
        s = streamed_ids(url, PROMPTS[0])
        check(s == alone[PROMPTS[0]], "streamed == generate alone", f" ({s})")
        # The same long prompt twice: the second takes the first's full cache blocks (the
        # engine's paged cache, prefix caching) and must decode the same tokens.
        long_prompt = "The quick brown fox jumps over the lazy dog. " * 12
        hits0 = metric(url, "dsv3_prefix_cache_hit_tokens_total") or 0
        first, second = completion_ids(url, long_prompt), completion_ids(url, long_prompt)
        hits = (metric(url, "dsv3_prefix_cache_hit_tokens_total") or 0) - hits0
        check(first == second and hits > 0, f"repeated prompt: {hits:.0f} prefix tokens shared",
              f", {first} vs {second}")
        status, text = post(url, "/v1/completions", {"model": "m", "prompt": "word " * 400,
                                                     "max_tokens": 4})
        code = json.loads(text).get("error", {}).get("code") if text.startswith("{") else None
        check(status == 400 and code == "context_length_exceeded",
              f"prompt over --max-model-len: {status} {code}", f" {text[:200]}")
        reserved = metric(url, "dsv3_cache_reserved_tokens")
        check(reserved == 0, f"reserved cache tokens after: {reserved}")
    finally:
        server.send_signal(signal.SIGTERM)
        rc = server.wait(timeout=60)
    check(rc == 0, f"SIGTERM: exit {rc}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dsv3", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--device", default="cuda", help="cpu: try the script without a GPU")
    a = p.parse_args()
    failures = []
    # The CPU engine has no --batch-invariant (its rows never take the tensor cores).
    invariant = ["--batch-invariant"] if a.device != "cpu" else []

    t0 = time.time()
    alone = {q: generate_ids(a, q, a.device) for q in PROMPTS}
    alone_inv = alone  # the CPU has one mode
    if invariant:
        alone_inv = {q: generate_ids(a, q, a.device, invariant) for q in PROMPTS}
    cpu = {q: generate_ids(a, q, "cpu") for q in PROMPTS}
    print(f"generate: {len(PROMPTS)} prompts on {a.device} (both modes) and cpu in "
          f"{time.time() - t0:.1f} s")
    serve_checks(a, invariant, alone_inv, cpu, True, failures)
    if invariant:
        serve_checks(a, [], alone, cpu, False, failures)
    print(f"serve --device {a.device}: {len(failures)} failures")
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
