// The FP8 prefill path (issue 7): the activation quantiser against the recipe's definition
// (train/fp8.h: 1×128 tiles, scale = max(amax / 448, FLT_MIN), saturating E4M3) code for code,
// cuBLASLt's block-scaled FP8 GEMM against float64 over the same dequantised operands (every
// block and tile of its own magnitude, so a scale read from the wrong place is an O(1) error;
// row counts that are not multiples of anything), and the engine's prefill on a random FP8
// model whose dims are multiples of 128 against its exact F32 path.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>

#include "core/dtype.h"
#include "gpu_test_util.h"
#include "kernels/cuda/blas.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/engine.h"
#include "kernels/cuda/kernels.h"
#include "kernels/linear.h"
#include "model/init.h"

using namespace dsv3;

namespace {

using gpu_test::device_buffer;
using gpu_test::err_vs_std;
using gpu_test::to_device;
using gpu_test::to_host;

// N(0, 1) values with a magnitude 2^U{-3..3} per 128 × 128 block (tile_rows = 1: per 1×128
// tile), and one all-zero tile and one outlier.
std::vector<float> varied(int64_t rows, int64_t cols, int64_t tile_rows, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_int_distribution<int> e(-3, 3);
  const int64_t tr = (rows + tile_rows - 1) / tile_rows, tc = (cols + 127) / 128;
  std::vector<float> mag(size_t(tr * tc));
  for (float& m : mag) m = std::ldexp(1.0f, e(rng));
  std::vector<float> v(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      v[size_t(r * cols + c)] = nd(rng) * mag[size_t((r / tile_rows) * tc + c / 128)];
  for (int64_t c = 0; c < std::min<int64_t>(cols, 128); ++c) v[size_t(c)] = 0.0f;
  if (rows > 1) v[size_t(cols + 3)] = 1e4f;
  return v;
}

// The recipe's 1×128 tiles, written out from its definition: codes [rows, k], scales [kb][rows].
void quantize_reference(const std::vector<float>& x, int64_t rows, int64_t k,
                        std::vector<uint8_t>* q, std::vector<float>* s) {
  const int64_t kb = k / 128;
  q->assign(size_t(rows * k), 0);
  s->assign(size_t(kb * rows), 0.0f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < kb; ++b) {
      float amax = 0;
      for (int64_t c = b * 128; c < b * 128 + 128; ++c)
        amax = std::max(amax, std::fabs(x[size_t(r * k + c)]));
      const float scale = amax > 0 ? std::max(amax / kE4M3Max, FLT_MIN) : 1.0f;
      (*s)[size_t(b * rows + r)] = scale;
      for (int64_t c = b * 128; c < b * 128 + 128; ++c)
        (*q)[size_t(r * k + c)] = f32_to_e4m3(x[size_t(r * k + c)] / scale);
    }
}

struct Fp8Case {
  int64_t rows, n, k;
};

class Fp8GemmGpu : public ::testing::TestWithParam<Fp8Case> {};

TEST_P(Fp8GemmGpu, QuantiserIsExactAndGemmMatchesFloat64) {
  SKIP_WITHOUT_GPU();
  const auto [rows, n, k] = GetParam();
  const int64_t kb = k / 128;
  const std::vector<float> x = varied(rows, k, 1, 3);
  std::vector<uint8_t> q_ref;
  std::vector<float> s_ref;
  quantize_reference(x, rows, k, &q_ref, &s_ref);
  const auto dx = to_device(x);
  auto dq = device_buffer<uint8_t>(size_t(rows * k));
  auto ds = device_buffer<float>(size_t(kb * rows));
  cuda::quantize_e4m3_tiles(dx.get(), rows, k, dq.get(), ds.get(), nullptr);
  DSV3_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(to_host(dq.get(), q_ref.size()), q_ref);
  EXPECT_EQ(to_host(ds.get(), s_ref.size()), s_ref);

  const std::vector<float> wv = varied(n, k, 128, 4);
  const Linear w = Linear::quantize_fp8(wv.data(), n, k);
  const auto* wq = static_cast<const uint8_t*>(w.weight.data());
  const std::vector<uint8_t> wcodes(wq, wq + n * k);
  const std::vector<float> wscale(w.scale_inv.ptr<float>(),
                                  w.scale_inv.ptr<float>() + w.scale_inv.numel());
  const auto dw = to_device(wcodes);
  const auto dws = to_device(wscale);
  auto dy = device_buffer<float>(size_t(rows * n));
  const size_t ws_bytes = size_t(32) << 20;
  auto work = device_buffer<uint8_t>(ws_bytes);
  cuda::Blas blas;
  ASSERT_TRUE(blas.matmul_fp8_block(rows, n, k, dq.get(), ds.get(), dw.get(), dws.get(), dy.get(),
                                    work.get(), ws_bytes, nullptr))
      << "cuBLASLt has no block-scaled FP8 algorithm for " << rows << "x" << n << "x" << k;
  DSV3_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> y = to_host(dy.get(), size_t(rows * n));
  const int64_t wkb = (k + 127) / 128;
  double num = 0, den = 0;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double ref = 0;
      for (int64_t c = 0; c < k; ++c)
        ref += double(e4m3_to_f32(q_ref[size_t(i * k + c)])) * s_ref[size_t((c / 128) * rows + i)] *
               double(e4m3_to_f32(wcodes[size_t(j * k + c)])) *
               wscale[size_t((j / 128) * wkb + c / 128)];
      const double d = double(y[size_t(i * n + j)]) - ref;
      num += std::isfinite(d) ? d * d : 1e300;
      den += ref * ref;
    }
  const double err = std::sqrt(num / den);
  std::printf("[ fp8 gemm %lldx%lldx%lld ] rel error vs float64 %.2e\n", (long long)rows,
              (long long)n, (long long)k, err);
  // The tensor cores' limited-precision sums between promotions: 1.3e-4 measured at K = 512.
  EXPECT_LE(err, 1e-3);
}

INSTANTIATE_TEST_SUITE_P(Shapes, Fp8GemmGpu,
                         ::testing::Values(Fp8Case{37, 320, 512}, Fp8Case{256, 384, 1024},
                                           Fp8Case{17, 2112, 256}));

TEST(Fp8PrefillGpu, EngineOnFp8TensorCoresStaysNearTheExactPath) {
  SKIP_WITHOUT_GPU();
  // Every projection's K a multiple of 128, so every FP8 linear takes the FP8 GEMM.
  ModelConfig c;
  c.vocab_size = 512;
  c.hidden_size = 256;
  c.intermediate_size = 384;
  c.moe_intermediate_size = 128;
  c.num_hidden_layers = 2;
  c.first_k_dense_replace = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 2;
  c.q_lora_rank = 128;
  c.kv_lora_rank = 128;
  c.qk_nope_head_dim = 64;
  c.qk_rope_head_dim = 32;
  c.v_head_dim = 64;
  c.n_routed_experts = 4;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 2;
  c.n_group = 1;
  c.topk_group = 1;
  c.max_position_embeddings = 128;
  c.num_nextn_predict_layers = 0;
  const std::string dir = (std::filesystem::temp_directory_path() / "dsv3_fp8_gemm_model").string();
  InitOptions io;
  io.dtype = "fp8";
  io.std = 0.05;  // layers that matter next to the embedding
  write_random_checkpoint(c, dir, io);
  const Model model(ModelWeights::load(dir));
  auto run = [&](bool exact, bool fp8) {
    cuda::CudaEngineOptions o;
    o.max_sequences = 2;
    o.max_context = 64;
    o.exact = exact;
    o.fp8_gemm = fp8;
    o.gemv_max_rows = 0;  // every linear over more than 0 rows: cuBLASLt
    const cuda::CudaEngine engine(model, o);
    LatentCache a = engine.new_cache(), b = engine.new_cache();
    std::vector<int32_t> p1, p2;
    for (int i = 0; i < 24; ++i) {
      p1.push_back(int32_t((37 * i + 5) % c.vocab_size));
      p2.push_back(int32_t((101 * i + 11) % c.vocab_size));
    }
    return engine.step({{&a, p1, true}, {&b, p2, true}});
  };
  const Tensor exact = run(true, false), fp8 = run(false, true), bf16 = run(false, false);
  const int64_t n = exact.numel();
  const double e_fp8 = err_vs_std(fp8.ptr<float>(), exact.ptr<float>(), n);
  const double e_bf16 = err_vs_std(bf16.ptr<float>(), exact.ptr<float>(), n);
  const double fp8_vs_bf16 = err_vs_std(fp8.ptr<float>(), bf16.ptr<float>(), n);
  std::printf(
      "[ engine prefill ] max|d|/std vs exact: fp8 gemm %.2e, bf16 gemm %.2e; fp8 vs bf16 "
      "%.2e\n",
      e_fp8, e_bf16, fp8_vs_bf16);
  EXPECT_LE(e_bf16, 5e-2);
  // E4M3 activations keep 3 mantissa bits against BF16's 7: a few times the BF16 error.
  EXPECT_LE(e_fp8, 2e-1);
  EXPECT_GT(fp8_vs_bf16, 0.0) << "the FP8 path was not taken";
  std::filesystem::remove_all(dir);
}

}  // namespace
