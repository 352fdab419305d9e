#!/usr/bin/env bash
# Issue 7 on a GPU machine (the `run` device tool; see docs/PERFORMANCE.md): configure and build
# only what the GPU work needs (DSV3_MINIMAL: no PCRE2 / cpp-httplib / yaml-cpp there), run the
# GPU tests, make random-weight checkpoints at real shapes with `dsv3 init`, and time decode.
# Usage: tools/gpu/run_issue7.sh [build] [test] [mla] [gemv] [experts] [v3] [profile] [profile_prefill]
#   [ab] [detail] [v2lite] [b1] [hf]   (default: build test v3 v2lite)
#   gemv: the one-row gemv per split-K and setting at V3's shapes, then the gemv over 1 to 16
#     rows at V3's and V2-Lite's dense shapes (bench_cuda_fp8_gemm --gemv-only, no checkpoint);
#   experts: the grouped experts kernel against cuBLASLt (bench_cuda_fp8_gemm --experts-only);
#   ab: the V3 checkpoint (or AB_MODEL's) once per flag set of AB, alternating on one machine;
#   profile: ncu over a short run of the V3 checkpoint (time per kernel); profile_prefill: over
#     one of its 2K-token prefills (the whole bench runs under ncu: slow);
#   detail: ncu's stall, memory and occupancy sections on the tile gemvs of an 8-token prefill
#     (they run as batch 8's do) and on the batch-1 attention chain's kernels;
#   mla: the MLA decode and prefill kernels at DeepSeek-V3's sizes (bench_cuda_mla);
#   b1: the 1.17B FP8 model of configs/bench-1b.json, which initialises in seconds;
#   hf: that model in BF16 in dsv3 and in HF transformers: logits parity and speed, same GPU
#     (HF_MODEL=v2lite: the V2-Lite checkpoint instead; HF_MODEL=v3: V3 dims x 4 layers in BF16,
#     as transformers runs our FP8 checkpoints only with the `kernels` package, which the GPU
#     machine lacks; both speed only unless HF_PARITY=1).
# Logs go to $OUT (the device tool's output folder) when set, else /tmp/issue7.
# Env: TESTS (gtest filter, default all), BATCHES, PREFILLS, AB / ROUNDS / AB_MODEL (ab's
# variants, rounds, and checkpoint: v3 or v2lite), PROMPT (decode prompt length, default 64),
# PROFILE_BATCH / PROFILE_LAUNCHES (profile's batch and launch count), BENCH_ARGS / BENCH_TAG
# (V3 bench: more flags, log suffix), BENCH_TIMEOUT (seconds per bench).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/issue7}
mkdir -p "$OUT"
BUILD=${BUILD:-/tmp/build-issue7}
CKPT=${CKPT:-/tmp/issue7-ckpt}
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build test v3 v2lite)
has() { [[ " ${stages[*]} " == *" $1 "* ]]; }
log() { echo "== $(date +%T) $*"; }
SECONDS=0

log "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
nvcc --version | tail -1
# A snapshot made by `git archive` (tools/gpu/snapshot.sh) has no .git: it names its commit.
if [ -f COMMIT ]; then echo "commit $(cat COMMIT)"; else git log -1 --format='commit %h %s' || true; fi
for p in libpcre2-8 cpp-httplib yaml-cpp fmt openblas; do
  pkg-config --exists "$p" && echo "pkg-config: $p present" || echo "pkg-config: $p MISSING"
done

if has build; then
  log "configure + build (DSV3_MINIMAL)"
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSV3_MINIMAL=ON -DDSV3_CUDA=ON \
    -DDSV3_WERROR=ON > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
  cmake --build "$BUILD" --target dsv3_gpu_tests dsv3_cli bench_cuda_decode bench_cuda_mla \
    bench_cuda_fp8_gemm -j"$(nproc)" \
    > "$OUT/build.log" 2>&1 || { grep -E "error|FAILED" "$OUT/build.log" | head -40; exit 1; }
fi

if has test; then
  log "GPU tests"
  # One process per test with a time limit, so a hang names its test and the rest still run;
  # ONE_PROCESS=1 runs them all in one (faster: one CUDA context) when device time is short.
  : > "$OUT/gpu_tests.log"
  if [ "${ONE_PROCESS:-0}" = 1 ]; then
    timeout 180 "$BUILD/bin/dsv3_gpu_tests" --gtest_filter="${TESTS:-*}" > "$OUT/gpu_tests.log" 2>&1 ||
      echo "GPU tests FAILED or timed out (rc $?)"
    grep -E "^\[  (PASSED|FAILED) |Failure|Expected|Which is|actual" "$OUT/gpu_tests.log" | head -40 || true
  else
    pass=0; fail=0
    for t in $("$BUILD/bin/dsv3_gpu_tests" --gtest_list_tests --gtest_filter="${TESTS:-*}" | awk '/^[^ ]/{s=$1} /^  /{print s $1}'); do
      if timeout 60 "$BUILD/bin/dsv3_gpu_tests" --gtest_filter="$t" >> "$OUT/gpu_tests.log" 2>&1; then
        pass=$((pass+1))
      else
        fail=$((fail+1)); echo "FAILED (rc $?): $t"
      fi
    done
    grep -E "^\[ [a-z0-9_]+ .*\]|Failure|Expected|Which is|actual|error:" "$OUT/gpu_tests.log" | head -60 || true
    echo "gpu tests: $pass passed, $fail failed"
  fi
fi

if has mla; then
  log "MLA kernels at DeepSeek-V3 sizes"
  timeout 120 "$BUILD/bin/bench_cuda_mla" 2>&1 | tee "$OUT/bench_mla.txt" || echo "bench mla failed"
fi

if has gemv; then
  log "gemv: one row at DeepSeek-V3's FP8 shapes per split-K; 1 to 16 rows"
  timeout 120 "$BUILD/bin/bench_cuda_fp8_gemm" --gemv-only 2>&1 | tee "$OUT/bench_gemv.txt" ||
    echo "bench gemv failed"
fi

if has experts; then
  log "routed experts: the grouped kernel against cuBLASLt"
  timeout 150 "$BUILD/bin/bench_cuda_fp8_gemm" --experts-only 2>&1 | tee "$OUT/bench_experts.txt" ||
    echo "bench experts failed"
fi

# ncu over a short run at batch PROFILE_BATCH (default 1; a prefill of 8 tokens a sequence, then
# eager decode steps): time per kernel and launch shape, so a batch's kernels tell apart from the
# prefill's by their grids.
profile() {
  local b=${PROFILE_BATCH:-1}
  log "ncu: time per kernel, $2, batch $b (first $3 launches: prefill of 8 a sequence + eager decode)"
  timeout 120 ncu --clock-control none --metrics gpu__time_duration.sum --print-summary per-kernel \
    --launch-count "$3" "$BUILD/bin/bench_cuda_decode" --model "$1" --batch "$b" \
    --steps 4 --prompt 8 --prefill none > "$OUT/ncu_$2.txt" 2>&1 ||
    echo "ncu failed or timed out (rc $?)"
  grep -E "^  [a-zA-Z_].*\(|gpu__time_duration.sum" "$OUT/ncu_$2.txt" | paste - - |
    sed -E 's/ +/ /g; s/\(const [^)]*\)|\(GemvArgs, int, int\)//; s/Device 0, CC 9.0, //' |
    cut -c1-160 | head -40 || true
}

# ncu over one 2K-token prefill (chunks of 2048): time per kernel, summed by name, to rank what
# prefill spends (flash attention, the experts' GEMMs, conversions).
profile_prefill() {
  log "ncu: time per kernel, $2, one 2,048-token prefill"
  timeout 240 ncu --clock-control none --metrics gpu__time_duration.sum --print-summary per-kernel \
    "$BUILD/bin/bench_cuda_decode" --model "$1" --batch none --prefill 2048 > "$OUT/ncu_prefill_$2.txt" 2>&1 || echo "ncu failed or timed out (rc $?)"
  grep -E "^  [a-zA-Z_].*\(|gpu__time_duration.sum" "$OUT/ncu_prefill_$2.txt" | paste - - |
    sed -E 's/ +/ /g; s/Device 0, CC 9.0, //' | cut -c1-200 | head -60 || true
}

# DeepSeek-V3 dims with 4 layers (3 dense + 1 MoE of 256 experts), FP8 blocks (or $1: bf16 into
# v3-4l-bf16), no MTP.
v3_checkpoint() {
  local dtype=${1:-fp8} dir="$CKPT/v3-4l"
  [ "$dtype" = fp8 ] || dir="$CKPT/v3-4l-$dtype"
  log "init DeepSeek-V3 x4 layers ($dtype)"
  mkdir -p "$CKPT"
  python3 - <<'PY' > "$CKPT/v3-4l.json"
import json
c = json.load(open("tests/fixtures/configs/deepseek_v3.json"))
c["num_hidden_layers"] = 4
c["num_nextn_predict_layers"] = 0
print(json.dumps(c))
PY
  [ -f "$dir/config.json" ] || /usr/bin/time -f "init %e s" "$BUILD/bin/dsv3" init \
    --config "$CKPT/v3-4l.json" --out "$dir" --dtype "$dtype"
}
if has v3; then
  v3_checkpoint
  "$BUILD/bin/dsv3" info --model "$CKPT/v3-4l" | tee "$OUT/info_v3.txt"
  log "bench V3 x4 fp8"
  # BENCH_ARGS: more flags (e.g. --kv-cache-dtype fp8), BENCH_TAG: a suffix for the log.
  # shellcheck disable=SC2086
  timeout "${BENCH_TIMEOUT:-200}" "$BUILD/bin/bench_cuda_decode" --model "$CKPT/v3-4l" \
    --batch "${BATCHES:-1,8,64,256}" --prefill "${PREFILLS:-1024,8192}" --steps 32 \
    --prompt "${PROMPT:-64}" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench_v3${BENCH_TAG:-}.txt" ||
    echo "bench v3 failed or timed out"
  if has profile; then profile "$CKPT/v3-4l" v3 "${PROFILE_LAUNCHES:-400}"; fi
  if has profile_prefill; then profile_prefill "$CKPT/v3-4l" v3; fi
  # Kept: a later call on the same (warm) machine skips the 2-minute init.
fi

# A/B on one machine: the V3 bench once per variant of AB (';'-separated flag sets, empty for
# the defaults), all into one log, e.g. AB=";--pdl 0" BATCHES=1,8 ... ab; ROUNDS=3 runs the
# list three times over, alternating (a variant at batch 1 takes ~4 s; two runs of one binary
# differ by up to ~7 tok/s there, so one reading of a smaller difference says nothing).
v2lite_checkpoint() {
  log "init DeepSeek-V2-Lite (bf16)"
  [ -f "$CKPT/v2lite/config.json" ] || /usr/bin/time -f "init %e s" "$BUILD/bin/dsv3" init \
    --config tests/fixtures/configs/deepseek_v2_lite.json --out "$CKPT/v2lite" --dtype bf16
}
if has ab; then
  if [ "${AB_MODEL:-v3}" = v2lite ]; then v2lite_checkpoint; else v3_checkpoint; fi
  ab_ckpt="$CKPT/$([ "${AB_MODEL:-v3}" = v2lite ] && echo v2lite || echo v3-4l)"
  IFS=';' read -ra once <<< "${AB:-}"
  [ ${#once[@]} -eq 0 ] && once=("")
  variants=()
  for ((round = 0; round < ${ROUNDS:-1}; ++round)); do variants+=("${once[@]}"); done
  : > "$OUT/ab.txt"
  for v in "${variants[@]}"; do
    log "A/B: ${v:-defaults}" | tee -a "$OUT/ab.txt"
    # shellcheck disable=SC2086
    timeout "${BENCH_TIMEOUT:-200}" "$BUILD/bin/bench_cuda_decode" --model "$ab_ckpt" \
      --batch "${BATCHES:-1}" --prefill "${PREFILLS:-none}" --steps 32 --prompt "${PROMPT:-64}" \
      $v 2>&1 | grep -E "^ *decode b=[0-9]+ |copy" | tee -a "$OUT/ab.txt" ||
      echo "A/B variant failed or timed out: $v"
  done
fi

# ncu sections, not just durations: why a kernel runs at the rate it does.
if has detail; then
  v3_checkpoint
  sections="--section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats
    --section Occupancy --section LaunchStats --section SchedulerStats"
  run_detail() {  # name, kernel regex, launches to skip, launches
    log "ncu sections: $1"
    # shellcheck disable=SC2086
    timeout 90 ncu --clock-control none $sections -k "regex:$2" --launch-skip "$3" -c "$4" \
      "$BUILD/bin/bench_cuda_decode" --model "$CKPT/v3-4l" --batch 1 --steps 1 --prompt 8 \
      --prefill none > "$OUT/ncu_detail_$1.txt" 2>&1 || echo "ncu failed or timed out (rc $?)"
    grep -E "^  [a-zA-Z_].*\(|Duration|DRAM Throughput|Achieved Occupancy|Registers Per|Warp Cycles Per Issued|One or More|No Eligible" \
      "$OUT/ncu_detail_$1.txt" | sed -E 's/ +/ /g' | cut -c1-150 | head -80 || true
  }
  run_detail tile8 gemv_tile_kernel 0 6
  run_detail chain "absorb_q_vec|attention_tc|gemv_rows|merge_kernel|latent_to_cache" 16 12
fi

# DeepSeek-V2-Lite dims, full depth (27 layers), BF16.
if has v2lite; then
  v2lite_checkpoint
  "$BUILD/bin/dsv3" info --model "$CKPT/v2lite" | tee "$OUT/info_v2lite.txt"
  log "bench V2-Lite bf16"
  timeout "${BENCH_TIMEOUT:-200}" "$BUILD/bin/bench_cuda_decode" --model "$CKPT/v2lite" \
    --batch "${BATCHES:-1,8,64,256}" --prefill "${PREFILLS:-1024,8192}" --steps 32 --prompt 64 \
    2>&1 | tee "$OUT/bench_v2lite.txt" || echo "bench v2lite failed or timed out"
  if has profile; then profile "$CKPT/v2lite" v2lite 1000; fi
fi
# configs/bench-1b.json (12 layers, hidden 1280, FP8): quick to make, every dense K a multiple of
# 128, so its prefill exercises the FP8 tensor-core GEMMs.
if has b1; then
  log "init bench-1b (fp8)"
  [ -f "$CKPT/b1/config.json" ] || "$BUILD/bin/dsv3" init --config configs/bench-1b.json \
    --out "$CKPT/b1" --dtype fp8 > /dev/null
  log "bench bench-1b fp8"
  timeout "${BENCH_TIMEOUT:-200}" "$BUILD/bin/bench_cuda_decode" --model "$CKPT/b1" \
    --batch "${BATCHES:-1,8,64}" --prefill "${PREFILLS:-1024,8192}" --steps 32 --prompt 64 \
    2>&1 | tee "$OUT/bench_b1.txt" || echo "bench b1 failed or timed out"
fi
# The peer: the same BF16 checkpoint in HF transformers (tools/reference/bench_hf_cuda.py).
if has hf; then
  # HF_MODEL=v2lite or v3: those checkpoints (BF16) for speed alone, unless HF_PARITY=1
  # (transformers in F32 for the parity check takes ~60 GB and minutes to load); default:
  # bench-1b, both.
  if [ "${HF_MODEL:-b1}" = v2lite ]; then
    v2lite_checkpoint
    hf_ckpt="$CKPT/v2lite"
  elif [ "${HF_MODEL:-b1}" = v3 ]; then
    v3_checkpoint bf16
    hf_ckpt="$CKPT/v3-4l-bf16"
  else
    log "init bench-1b (bf16)"
    [ -f "$CKPT/b1bf/config.json" ] || "$BUILD/bin/dsv3" init --config configs/bench-1b.json \
      --out "$CKPT/b1bf" --dtype bf16 > /dev/null
    hf_ckpt="$CKPT/b1bf"
  fi
  hf_parity=()
  if [ "${HF_MODEL:-b1}" = b1 ] || [ "${HF_PARITY:-0}" = 1 ]; then
    python3 tools/reference/bench_hf_cuda.py --model "$hf_ckpt" --make-ids "$CKPT/ids.safetensors"
    "$BUILD/bin/dsv3" forward --model "$hf_ckpt" --input "$CKPT/ids.safetensors" \
      --output "$CKPT/ours.safetensors" --device cuda
    hf_parity=(--ids "$CKPT/ids.safetensors" --ours "$CKPT/ours.safetensors")
  fi
  hf_tag=$(basename "$hf_ckpt")
  log "HF transformers, $hf_tag"
  timeout "${BENCH_TIMEOUT:-200}" python3 tools/reference/bench_hf_cuda.py --model "$hf_ckpt" \
    "${hf_parity[@]}" --batch "${HF_BATCHES:-1,8}" --prefill "${HF_PREFILLS:-1024}" 2>&1 |
    grep -v Warning | tee "$OUT/hf_$hf_tag.txt" || echo "HF bench failed or timed out"
  log "dsv3, $hf_tag"
  if [ "$hf_tag" = v2lite ] && [ -s "$OUT/bench_v2lite.txt" ]; then
    echo "dsv3 on this checkpoint: bench_v2lite.txt of this run"
  else
    timeout "${BENCH_TIMEOUT:-200}" "$BUILD/bin/bench_cuda_decode" --model "$hf_ckpt" \
      --batch "${HF_BATCHES:-1,8}" --prefill "${HF_PREFILLS:-1024}" --steps 32 --prompt 64 \
      2>&1 | tee "$OUT/bench_dsv3_$hf_tag.txt" || echo "bench $hf_tag failed or timed out"
  fi
fi
log "done in ${SECONDS}s"
