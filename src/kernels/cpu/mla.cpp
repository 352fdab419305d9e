// Multi-head latent attention over a latent cache (MODEL_SPEC §3), per head:
//   absorbed: q_lat = q_nope·W_UK; s = q_lat·ckvᵀ + q_pe·kpeᵀ; o = (softmax(s)·ckv)·W_UVᵀ
//   naive:    K = ckv·W_UKᵀ, V = ckv·W_UVᵀ; s = q_nope·Kᵀ + q_pe·kpeᵀ; o = softmax(s)·V
// Both are the same function of the inputs; the absorbed one never expands the cache.
// Heads run in parallel; each dequantises its own rows of kv_b once per call.
#include <cblas.h>

#include <cmath>
#include <vector>

#include "core/threads.h"
#include "kernels/cpu/cpu_kernels.h"

namespace dsv3::cpu {

namespace {

using ::cblas_sgemm;

// C[m, n] = A[m, k] · B (B [k, n] when !bt, [n, k] when bt), row-major, leading dims given.
void gemm(bool bt, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
          int64_t ldb, float* c, int64_t ldc, float beta = 0.0f) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, bt ? CblasTrans : CblasNoTrans, int(m), int(n), int(k),
              1.0f, a, int(lda), b, int(ldb), beta, c, int(ldc));
}

// In-place causal softmax of s [T, L] where row t sees columns 0 .. start + t.
void causal_softmax(float* s, int64_t T, int64_t L, int64_t start, float scale) {
  for (int64_t t = 0; t < T; ++t) {
    float* row = s + t * L;
    const int64_t n = start + t + 1;
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; ++j) mx = std::max(mx, row[j] *= scale);
    double sum = 0;
    for (int64_t j = 0; j < n; ++j) sum += row[j] = std::exp(row[j] - mx);
    const float inv = float(1.0 / sum);
    for (int64_t j = 0; j < n; ++j) row[j] *= inv;
    for (int64_t j = n; j < L; ++j) row[j] = 0.0f;
  }
}

}  // namespace

void mla_attention(const float* q, int64_t T, int64_t H, const float* ckv, const float* kpe,
                   int64_t L, int64_t dc, int64_t dr, int64_t start, const Linear& kv_b, int64_t dn,
                   int64_t dv, float scale, bool absorbed, float* out) {
  init_blas();
  const int64_t dqk = dn + dr;
  const int64_t span = start + T;  // cache rows any query of this call can see
  parallel_for(H, [&](int64_t h0, int64_t h1, int) {
    std::vector<float> w(static_cast<size_t>((dn + dv) * dc));  // W_UK rows then W_UV rows
    std::vector<float> qn(static_cast<size_t>(T * dn)), qp(static_cast<size_t>(T * dr));
    std::vector<float> s(static_cast<size_t>(T * span));
    std::vector<float> tmp;
    for (int64_t h = h0; h < h1; ++h) {
      kv_b.dequantize_rows(h * (dn + dv), (h + 1) * (dn + dv), w.data());
      const float* w_uk = w.data();            // [dn, dc]
      const float* w_uv = w.data() + dn * dc;  // [dv, dc]
      for (int64_t t = 0; t < T; ++t) {
        const float* src = q + (t * H + h) * dqk;
        std::copy(src, src + dn, qn.begin() + t * dn);
        std::copy(src + dn, src + dqk, qp.begin() + t * dr);
      }
      float* o = out;  // rows t*H + h, stride H*dv
      if (absorbed) {
        tmp.resize(static_cast<size_t>(T * dc));
        gemm(false, T, dc, dn, qn.data(), dn, w_uk, dc, tmp.data(), dc);        // q_lat
        gemm(true, T, span, dc, tmp.data(), dc, ckv, dc, s.data(), span);       // q_lat·ckvᵀ
        gemm(true, T, span, dr, qp.data(), dr, kpe, dr, s.data(), span, 1.0f);  // + q_pe·kpeᵀ
        causal_softmax(s.data(), T, span, start, scale);
        gemm(false, T, dc, span, s.data(), span, ckv, dc, tmp.data(), dc);    // o_lat
        gemm(true, T, dv, dc, tmp.data(), dc, w_uv, dc, o + h * dv, H * dv);  // o_lat·W_UVᵀ
      } else {
        tmp.resize(static_cast<size_t>(span * (dn + dv)));
        float* k = tmp.data();              // [span, dn]
        float* v = tmp.data() + span * dn;  // [span, dv]
        gemm(true, span, dn, dc, ckv, dc, w_uk, dc, k, dn);
        gemm(true, span, dv, dc, ckv, dc, w_uv, dc, v, dv);
        gemm(true, T, span, dn, qn.data(), dn, k, dn, s.data(), span);
        gemm(true, T, span, dr, qp.data(), dr, kpe, dr, s.data(), span, 1.0f);
        causal_softmax(s.data(), T, span, start, scale);
        gemm(false, T, dv, span, s.data(), span, v, dv, o + h * dv, H * dv);
      }
    }
  });
  (void)L;
}

}  // namespace dsv3::cpu
