// The two MLA attention kernels at DeepSeek-V3's sizes (128 heads, kv_lora 512, rope 64, nope
// 128, v 128), each against the ceiling measured in the same run:
// 1. Decode (absorbed, over the BF16 latent cache; mla_attention_tc on the tensor cores and
//    mla_attention on the CUDA cores): GB/s of cache read against a device-to-device copy, and
//    TFLOP/s (at 128 heads a cache row feeds 128 · 2 · (576 + 512) FLOPs: compute-bound; at
//    V2-Lite's 16, 8 times fewer: memory-bound). FlashMLA reports up to 3000 GB/s memory-bound
//    and 660 TFLOP/s compute-bound on the H800. The tensor-core kernel also runs with its key
//    splits aimed at two waves of blocks (set_mla_split_blocks), the rule before one wave, over
//    an FP8 cache, on the mma.sync kernels instead of the wgmma ones (set_mla_wgmma) and, at 16
//    heads, on the 64-head kernels instead of the 16-head ones (set_mla_tc_narrow). L2 is flushed
//    before each timed call: one layer's cache at batch 1 would fit in it.
// 2. Prefill (flash_prefill, non-absorbed, causal): TFLOP/s of its useful work, 2 · heads ·
//    n(n+1)/2 · (dn + dr + dv), against a square cuBLASLt BF16 GEMM (the dense peak in
//    practice).
// Inputs are one constant (the kernels' time does not depend on the values); their numerics are
// tested in tests/cuda/test_kernels_gpu.cpp.
// Decode runs at (--batch, --context), at batch 1 over 4 × --context and at batch 1 over 96
// tokens (a short chat: latency-bound), with 128 heads and 16.
// Usage: bench_cuda_mla [--batch 64] [--context 4096] [--prefill 1024,8192]
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <string>
#include <vector>

#include "core/error.h"
#include "cuda_bench.h"
#include "decode_bytes.h"
#include "kernels/cuda/blas.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/kernels.h"

using namespace dsv3;

namespace {

constexpr int64_t kHeads = 128, kLiteHeads = 16, kDc = 512, kDr = 64, kDn = 128, kDv = 128;

void* device_filled(size_t bytes) {
  void* p = nullptr;
  DSV3_CUDA_CHECK(cudaMalloc(&p, bytes));
  // One small finite value everywhere: 0x3c3c is ~0.0115 in BF16, 0x3c3c3c3c ~0.0115 in F32.
  DSV3_CUDA_CHECK(cudaMemset(p, 0x3c, bytes));
  return p;
}

// Decode: `batch` sequences each at the last position of `context` cached rows, `heads` query
// heads; the CUDA-core kernel too when `cuda_cores`.
void decode(int64_t batch, int64_t context, int64_t heads, bool cuda_cores, double copy_bw) {
  // The engine's paged layout: blocks of 64 rows, each sequence's consecutive.
  const int64_t block = 64, mb = (context + block - 1) / block;
  cuda::CachePool pool{nullptr, 1, batch * mb, block, kDc, kDr, true, nullptr, mb};
  const size_t cache_bytes = size_t(batch * mb * block * pool.row() * 2);
  pool.base = device_filled(cache_bytes);
  std::vector<int32_t> table(static_cast<size_t>(batch * mb));
  for (size_t i = 0; i < table.size(); ++i) table[i] = int32_t(i);
  int32_t* dtable = nullptr;
  DSV3_CUDA_CHECK(cudaMalloc(&dtable, table.size() * 4));
  DSV3_CUDA_CHECK(cudaMemcpy(dtable, table.data(), table.size() * 4, cudaMemcpyHostToDevice));
  pool.tables = dtable;
  auto* qc = static_cast<float*>(device_filled(size_t(batch * heads * pool.row()) * 4));
  auto* olat = static_cast<float*>(device_filled(size_t(batch * heads * kDc) * 4));
  // The engine's split scratch for its default 512-token chunks.
  const int64_t partial_floats = 512 * heads * (kDc + 2);
  auto* partial = static_cast<float*>(device_filled(size_t(partial_floats) * 4));
  std::vector<int32_t> pos(size_t(batch), int32_t(context - 1)),
      slots(static_cast<size_t>(batch), 0);
  for (int64_t b = 0; b < batch; ++b) slots[size_t(b)] = int32_t(b);
  int32_t *dpos = nullptr, *dslots = nullptr;
  DSV3_CUDA_CHECK(cudaMalloc(&dpos, pos.size() * 4));
  DSV3_CUDA_CHECK(cudaMalloc(&dslots, slots.size() * 4));
  DSV3_CUDA_CHECK(cudaMemcpy(dpos, pos.data(), pos.size() * 4, cudaMemcpyHostToDevice));
  DSV3_CUDA_CHECK(cudaMemcpy(dslots, slots.data(), slots.size() * 4, cudaMemcpyHostToDevice));
  void* qcb = device_filled(size_t(batch * heads * pool.row()) * 2);
  // Bytes that must move (the cache rows, the queries, the outputs) and the useful FLOPs: per
  // head and key, dc + dr multiply-adds for the score and dc for the sum.
  const double flops = 2.0 * double(batch * heads * context) * double(pool.row() + kDc);
  // The same rows in FP8 (c_kv codes, a scale per 128 columns, k_pe in BF16): fewer bytes to
  // read, converted to BF16 on the way into shared memory.
  cuda::CachePool fp8_pool = pool;
  fp8_pool.bf16 = false;
  fp8_pool.fp8 = true;
  const size_t fp8_bytes = size_t(batch * mb * block * fp8_pool.row_bytes());
  fp8_pool.base = device_filled(fp8_bytes);
  const double query_bytes = double(batch * heads * (pool.row() + kDc) * 4);
  int sms = 0;
  DSV3_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const int64_t two_waves = 2 * int64_t(sms);  // the tensor-core kernels hold one block an SM
  struct Variant {
    const char* name;
    bool tc;
    int64_t split_blocks;
    bool fp8;
    bool narrow = true;  // up to 16 heads on a 16-head kernel
    bool wgmma = true;   // the wgmma kernels on Hopper
  };
  for (const Variant& v :
       {Variant{"tensor cores,", true, 0, false}, Variant{"tc, 2 waves,", true, two_waves, false},
        Variant{"tc, FP8 cache,", true, 0, true},
        Variant{"tc, FP8 mma.sync,", true, 0, true, true, false},
        Variant{"tc, FP8 64-head,", true, 0, true, false},
        Variant{"tc, mma.sync,", true, 0, false, true, false},
        Variant{"tc, 64-head,", true, 0, false, false},
        Variant{"tc, 64-head mma.sync,", true, 0, false, false, false},
        Variant{"CUDA cores,", false, 0, false}}) {
    if (!v.tc && !cuda_cores) continue;
    if (!v.narrow && heads > 16) continue;  // the same kernel as with narrow
    cuda::set_mla_split_blocks(v.split_blocks);
    cuda::set_mla_tc_narrow(v.narrow);
    cuda::set_mla_wgmma(v.wgmma);
    const double ms = bench::time_ms(
        [&] {
          if (v.tc)
            cuda::mla_attention_tc(static_cast<const uint16_t*>(qcb), batch, heads,
                                   v.fp8 ? fp8_pool : pool, 0, dpos, dslots, context - 1, 0.1f,
                                   partial, partial_floats, olat, nullptr);
          else
            cuda::mla_attention(qc, batch, heads, pool, 0, dpos, dslots, context - 1, 0.1f, partial,
                                partial_floats, olat, nullptr);
        },
        10, bench::l2_flusher());
    const double bytes = double(v.fp8 ? fp8_bytes : cache_bytes) + query_bytes;
    fmt::print(
        "decode {:>14} {:>3} heads batch {:>3} context {:>6}: {:8.3f} ms {:6.0f} GB/s ({:.0f}% of "
        "copy) {:6.1f} TFLOP/s\n",
        v.name, heads, batch, context, ms, bytes / ms / 1e6,
        100.0 * bytes / ms / 1e6 / (copy_bw / 1e9), flops / ms / 1e9);
  }
  cuda::set_mla_split_blocks(0);
  cuda::set_mla_tc_narrow(true);
  cuda::set_mla_wgmma(true);
  DSV3_CUDA_CHECK(cudaFree(qcb));
  for (void* p : {pool.base, fp8_pool.base, static_cast<void*>(qc), static_cast<void*>(olat),
                  static_cast<void*>(partial), static_cast<void*>(dpos), static_cast<void*>(dslots),
                  static_cast<void*>(dtable)})
    DSV3_CUDA_CHECK(cudaFree(p));
}

// Prefill of one n-token prompt (no cached prefix).
void prefill(int64_t n, double gemm_tflops) {
  const int64_t dq = kDn + kDr, dkv = kDn + kDv;
  void* q = device_filled(size_t(n * kHeads * dq) * 2);
  void* kv = device_filled(size_t(n * kHeads * dkv) * 2);
  void* cache = device_filled(size_t(n * (kDc + kDr)) * 2);
  auto* o = static_cast<float*>(device_filled(size_t(n * kHeads * kDv) * 4));
  cuda::FlashArgs f;
  f.q = q;
  f.ldq = kHeads * dq;
  f.kv = kv;
  f.ldkv = kHeads * dkv;
  f.kpe = static_cast<const uint16_t*>(cache) + kDc;
  f.ldkpe = kDc + kDr;
  f.dn = int(kDn);
  f.dr = int(kDr);
  f.dv = int(kDv);
  f.heads = kHeads;
  f.n = n;
  f.k_end = n;
  f.scale_log2 = 0.1f;
  f.o = o;
  f.ldo = kHeads * kDv;
  const double flops = 2.0 * double(kHeads) * double(n) * double(n + 1) / 2 * double(dq + kDv);
  for (const int kind : {0, 1, 2}) {  // kernels.h: mma.sync; wgmma over 64 and 128 keys
    cuda::set_flash_kernel(kind);
    const double ms = bench::time_ms([&] { cuda::flash_prefill(f, nullptr); }, 5);
    const double tflops = flops / ms / 1e9;
    fmt::print(
        "prefill {:>6} tokens, kernel {}: {:8.3f} ms  {:6.1f} TFLOP/s  ({:.0f}% of the BF16 "
        "GEMM)\n",
        n, kind, ms, tflops, 100.0 * tflops / gemm_tflops);
  }
  cuda::set_flash_kernel(2);
  for (void* p : {q, kv, cache, static_cast<void*>(o)}) DSV3_CUDA_CHECK(cudaFree(p));
}

double bf16_gemm_tflops() {
  const int64_t s = 8192;
  void* x = device_filled(size_t(s * s) * 2);
  void* w = device_filled(size_t(s * s) * 2);
  auto* y = static_cast<float*>(device_filled(size_t(s * s) * 4));
  const size_t ws_bytes = size_t(32) << 20;
  void* ws = device_filled(ws_bytes);
  cuda::Blas blas;
  double ms = 0;
  if (blas.matmul_bf16(s, s, s, x, w, y, ws, ws_bytes, nullptr))
    ms = bench::time_ms([&] { blas.matmul_bf16(s, s, s, x, w, y, ws, ws_bytes, nullptr); });
  for (void* p : {x, w, static_cast<void*>(y), ws}) DSV3_CUDA_CHECK(cudaFree(p));
  DSV3_CHECK(ms > 0, "cuBLASLt found no BF16 algorithm for {0}x{0}x{0}", s);
  return 2.0 * double(s) * double(s) * double(s) / ms / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t batch = 64, context = 4096;
  std::string prefills = "1024,8192";
  bool bad = argc % 2 == 0;  // flags come with values
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--batch")
      batch = std::stoll(v);
    else if (k == "--context")
      context = std::stoll(v);
    else if (k == "--prefill")
      prefills = v;
    else
      bad = true;
  }
  if (bad || batch <= 0 || context <= 0) {
    fmt::print(stderr,
               "usage: bench_cuda_mla [--batch 64] [--context 4096] [--prefill 1024,8192]\n");
    return 2;
  }
  try {
    DSV3_CHECK(cuda::device_count() > 0, "no CUDA device");
    fmt::print("device {}\n", cuda::device_summary(0));
    const double bw = bench::copy_bandwidth();
    const double gemm = bf16_gemm_tflops();
    fmt::print("device-to-device copy {:.0f} GB/s; cuBLASLt BF16 8192^3 {:.0f} TFLOP/s\n", bw / 1e9,
               gemm);
    for (const int64_t heads : {kHeads, kLiteHeads}) {
      decode(batch, context, heads, heads == kHeads, bw);
      decode(1, context * 4, heads, false, bw);
      decode(1, 96, heads, false, bw);  // a short chat: latency, not bytes
    }
    for (const int n : bench::parse_list(prefills)) prefill(n, gemm);
  } catch (const Error& e) {
    fmt::print(stderr, "bench_cuda_mla: {}\n", e.what());
    return 1;
  }
  return 0;
}
