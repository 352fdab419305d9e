#include "kernels/linear.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/threads.h"

namespace dsv3 {

void Linear::dequantize_rows(int64_t r0, int64_t r1, float* dst) const {
  const int64_t k = in_features();
  const size_t esize = dtype_size(weight.dtype());
  const auto* base = static_cast<const char*>(weight.data());
  if (!quantized()) {
    convert_to_f32(weight.dtype(), base + size_t(r0 * k) * esize, dst, size_t((r1 - r0) * k));
    return;
  }
  DSV3_ASSERT(weight.dtype() == DType::F8_E4M3 || weight.dtype() == DType::F8_E5M2);
  const float* lut = weight.dtype() == DType::F8_E4M3 ? kE4M3ToF32.data() : kE5M2ToF32.data();
  const auto* q = reinterpret_cast<const uint8_t*>(base);
  const float* scale = scale_inv.ptr<float>();
  const int64_t scale_cols = scale_inv.dim(1);
  for (int64_t r = r0; r < r1; ++r) {
    const float* srow = scale + (r / block_n) * scale_cols;
    const uint8_t* qrow = q + r * k;
    float* d = dst + (r - r0) * k;
    for (int64_t c0 = 0; c0 < k; c0 += block_k) {
      const float s = srow[c0 / block_k];
      const int64_t c1 = std::min(k, c0 + block_k);
      for (int64_t c = c0; c < c1; ++c) d[c] = lut[qrow[c]] * s;
    }
  }
}

Linear Linear::quantize_fp8(const float* w, int64_t out, int64_t in, int64_t bn, int64_t bk) {
  Linear l;
  l.block_n = bn;
  l.block_k = bk;
  l.weight = Tensor::empty(DType::F8_E4M3, {out, in});  // the blocks below cover every element
  const int64_t sr = (out + bn - 1) / bn, sc = (in + bk - 1) / bk;
  l.scale_inv = Tensor::empty(DType::F32, {sr, sc});
  auto* q = l.weight.ptr<uint8_t>();
  float* scale = l.scale_inv.ptr<float>();
  parallel_for(sr, [&](int64_t b0, int64_t b1, int) {
    for (int64_t br = b0; br < b1; ++br) {
      for (int64_t bc = 0; bc < sc; ++bc) {
        const int64_t r1 = std::min(out, (br + 1) * bn), c1 = std::min(in, (bc + 1) * bk);
        float amax = 0;
        for (int64_t r = br * bn; r < r1; ++r)
          for (int64_t c = bc * bk; c < c1; ++c) amax = std::max(amax, std::fabs(w[r * in + c]));
        const float s = amax > 0 ? amax / kE4M3Max : 1.0f;
        scale[br * sc + bc] = s;
        for (int64_t r = br * bn; r < r1; ++r)
          for (int64_t c = bc * bk; c < c1; ++c) q[r * in + c] = f32_to_e4m3(w[r * in + c] / s);
      }
    }
  });
  return l;
}

}  // namespace dsv3
