#include "kernels/ops.h"

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/cpu/cpu_kernels.h"

namespace dsv3::ops {

namespace {

// Until the CUDA backend implements an op, asking for it on a GPU tensor is a clear error.
void require_cpu(const char* op, const Tensor& t) {
  DSV3_CHECK(t.device().is_cpu(), "op {} is not available on {} in this build", op,
             t.device().str());
}

void require_f32(const char* op, const char* what, const Tensor& t) {
  DSV3_CHECK(t.dtype() == DType::F32, "op {}: {} must be F32, got {}", op, what,
             dtype_name(t.dtype()));
}

std::atomic<bool> g_fp8_activations{false};

// x [rows, k] through E4M3 in 1×128 tiles and back: scale = max(amax / 448, FLT_MIN) (1 for an
// all-zero tile), x' = e4m3(x / scale) · scale (the CUDA engine's quantize_e4m3_tiles).
std::vector<float> through_e4m3_tiles(const float* x, int64_t rows, int64_t k) {
  std::vector<float> out(static_cast<size_t>(rows * k));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < k; b += 128) {
      const float* t = x + r * k + b;
      float amax = 0.0f;
      for (int64_t c = 0; c < 128; ++c) amax = std::max(amax, std::fabs(t[c]));
      const float scale = amax > 0.0f ? std::max(amax / kE4M3Max, FLT_MIN) : 1.0f;
      for (int64_t c = 0; c < 128; ++c)
        out[size_t(r * k + b + c)] = e4m3_to_f32(f32_to_e4m3(t[c] / scale)) * scale;
    }
  return out;
}

}  // namespace

void set_fp8_activations(bool on) {
  g_fp8_activations = on;
}

void embedding(const Tensor& ids, const Tensor& table, Tensor& out) {
  require_cpu("embedding", out);
  DSV3_CHECK(ids.dtype() == DType::I32 && ids.ndim() == 1, "embedding: ids must be I32 [T]");
  DSV3_CHECK(table.ndim() == 2 && dtype_is_float(table.dtype()),
             "embedding: table must be a float [V, H] tensor");
  DSV3_CHECK(out.ndim() == 2 && out.dim(0) == ids.dim(0) && out.dim(1) == table.dim(1),
             "embedding: out has shape {}, expected [{}, {}]", shape_str(out.shape()), ids.dim(0),
             table.dim(1));
  require_f32("embedding", "out", out);
  cpu::embedding(ids.ptr<int32_t>(), ids.dim(0), table, out.ptr<float>());
}

void rmsnorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) {
  require_cpu("rmsnorm", x);
  require_f32("rmsnorm", "x", x);
  require_f32("rmsnorm", "out", out);
  DSV3_CHECK(x.ndim() == 2 && out.shape() == x.shape(),
             "rmsnorm: x {} and out {} must match [T, D]", shape_str(x.shape()),
             shape_str(out.shape()));
  DSV3_CHECK(weight.numel() == x.dim(1), "rmsnorm: weight has {} elements, expected {}",
             weight.numel(), x.dim(1));
  cpu::rmsnorm(x.ptr<float>(), x.dim(0), x.dim(1), weight, eps, out.ptr<float>());
}

void linear(const Tensor& x, const Linear& w, Tensor& y) {
  require_cpu("linear", x);
  require_f32("linear", "x", x);
  require_f32("linear", "y", y);
  DSV3_CHECK(x.ndim() == 2 && x.dim(1) == w.in_features(),
             "linear: input {} does not match weight [{}, {}]", shape_str(x.shape()),
             w.out_features(), w.in_features());
  DSV3_CHECK(y.ndim() == 2 && y.dim(0) == x.dim(0) && y.dim(1) == w.out_features(),
             "linear: output {} should be [{}, {}]", shape_str(y.shape()), x.dim(0),
             w.out_features());
  const int64_t k = w.in_features();
  if (g_fp8_activations && w.quantized() && w.block_n == 128 && w.block_k == 128 && k % 128 == 0) {
    const std::vector<float> xq = through_e4m3_tiles(x.ptr<float>(), x.dim(0), k);
    cpu::linear(xq.data(), x.dim(0), w, y.ptr<float>());
    return;
  }
  cpu::linear(x.ptr<float>(), x.dim(0), w, y.ptr<float>());
}

void add_inplace(Tensor& x, const Tensor& y) {
  require_cpu("add", x);
  DSV3_CHECK(x.shape() == y.shape(), "add: shapes {} and {} differ", shape_str(x.shape()),
             shape_str(y.shape()));
  cpu::add_inplace(x.ptr<float>(), y.ptr<float>(), x.numel());
}

void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out) {
  require_cpu("silu_mul", gate);
  DSV3_CHECK(gate.shape() == up.shape() && gate.shape() == out.shape(),
             "silu_mul: shapes {}, {}, {} differ", shape_str(gate.shape()), shape_str(up.shape()),
             shape_str(out.shape()));
  cpu::silu_mul(gate.ptr<float>(), up.ptr<float>(), out.ptr<float>(), gate.numel());
}

void rope_interleaved(Tensor& x, int64_t offset, const std::vector<float>& inv_freq, float factor,
                      const Tensor& positions) {
  require_cpu("rope", x);
  require_f32("rope", "x", x);
  DSV3_CHECK(x.ndim() == 3, "rope: x must be [T, n, w], got {}", shape_str(x.shape()));
  DSV3_CHECK(offset >= 0 && offset + 2 * int64_t(inv_freq.size()) <= x.dim(2),
             "rope: slice [{}, {}) is outside width {}", offset,
             offset + 2 * int64_t(inv_freq.size()), x.dim(2));
  DSV3_CHECK(positions.dtype() == DType::I32 && positions.numel() == x.dim(0),
             "rope: positions must be I32 [{}]", x.dim(0));
  cpu::rope_interleaved(x.ptr<float>(), x.dim(0), x.dim(1), x.dim(2), offset, inv_freq, factor,
                        positions.ptr<int32_t>());
}

void attention_causal(const Tensor& q, const Tensor& k, const Tensor& v, float scale, Tensor& out) {
  require_cpu("attention", q);
  DSV3_CHECK(q.ndim() == 3 && k.shape() == q.shape() && v.ndim() == 3 && v.dim(0) == q.dim(0) &&
                 v.dim(1) == q.dim(1) && out.shape() == v.shape(),
             "attention: q {}, k {}, v {}, out {} do not fit", shape_str(q.shape()),
             shape_str(k.shape()), shape_str(v.shape()), shape_str(out.shape()));
  cpu::attention_causal(q.ptr<float>(), k.ptr<float>(), v.ptr<float>(), q.dim(0), q.dim(1),
                        q.dim(2), v.dim(2), scale, out.ptr<float>());
}

}  // namespace dsv3::ops

namespace dsv3::ops {

void mla_attention(const Tensor& q, const Tensor& ckv, const Tensor& kpe, int64_t start,
                   const Linear& kv_b, int64_t nope, int64_t v_dim, float scale, bool absorbed,
                   Tensor& out) {
  require_cpu("mla_attention", q);
  DSV3_CHECK(q.ndim() == 3 && ckv.ndim() == 2 && kpe.ndim() == 2 && ckv.dim(0) == kpe.dim(0),
             "mla_attention: q {}, ckv {}, kpe {} do not fit", shape_str(q.shape()),
             shape_str(ckv.shape()), shape_str(kpe.shape()));
  const int64_t t = q.dim(0), h = q.dim(1), dr = kpe.dim(1), dc = ckv.dim(1);
  DSV3_CHECK(q.dim(2) == nope + dr, "mla_attention: q width {} != nope {} + rope {}", q.dim(2),
             nope, dr);
  DSV3_CHECK(start >= 0 && start + t <= ckv.dim(0),
             "mla_attention: queries at {}..{} need {} cache rows, have {}", start, start + t - 1,
             start + t, ckv.dim(0));
  DSV3_CHECK(kv_b.out_features() == h * (nope + v_dim) && kv_b.in_features() == dc,
             "mla_attention: kv_b [{}, {}] does not fit {} heads", kv_b.out_features(),
             kv_b.in_features(), h);
  DSV3_CHECK(out.ndim() == 3 && out.dim(0) == t && out.dim(1) == h && out.dim(2) == v_dim,
             "mla_attention: out {} should be [{}, {}, {}]", shape_str(out.shape()), t, h, v_dim);
  cpu::mla_attention(q.ptr<float>(), t, h, ckv.ptr<float>(), kpe.ptr<float>(), ckv.dim(0), dc, dr,
                     start, kv_b, nope, v_dim, scale, absorbed, out.ptr<float>());
}

}  // namespace dsv3::ops
