#!/usr/bin/env python3
"""Single-thread encode throughput of Hugging Face `tokenizers` on a text file.

The counterpart of bench/bench_tokenizer.cpp: same file, same unit of work (each line,
newline included, encoded on its own without special tokens), so the two numbers compare.

  python3 tools/reference/bench_hf_tokenizer.py --tokenizer .cache/tokenizer/deepseek_v3 \
      --text corpus.txt [--repeat 3]
"""
import argparse
import os
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread, as in our benchmark
os.environ.setdefault("RAYON_NUM_THREADS", "1")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="tokenizer.json or a folder holding it")
    p.add_argument("--text", required=True)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    from tokenizers import Tokenizer
    path = args.tokenizer
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    tok = Tokenizer.from_file(path)
    with open(args.text, encoding="utf-8", newline="") as f:
        text = f.read()
    # Split on "\n" only (not str.splitlines' wider set) to match the C++ benchmark.
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    if not lines[-1]:
        lines.pop()
    nbytes = sum(len(line.encode("utf-8")) for line in lines)
    best, ntok = None, 0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        n = 0
        for line in lines:
            n += len(tok.encode(line, add_special_tokens=False).ids)
        dt = time.perf_counter() - t0
        ntok = n
        best = dt if best is None else min(best, dt)
    print(f"hf_tokenizers: {nbytes} bytes, {len(lines)} lines, {ntok} tokens, best of {args.repeat}: "
          f"{best:.3f} s, {nbytes / best / 1e6:.2f} MB/s, {ntok / best / 1e6:.3f} Mtok/s")


if __name__ == "__main__":
    main()
