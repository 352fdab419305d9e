#include "kernels/cuda/blas.h"

#include <cublasLt.h>

#include "core/error.h"

#define DSV3_CUBLAS_CHECK(call)                                                              \
  do {                                                                                       \
    const cublasStatus_t st_ = (call);                                                       \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                        \
      ::dsv3::fail("cuBLASLt error at {}:{}: {} ({})", __FILE__, __LINE__, #call, int(st_)); \
  } while (0)

namespace dsv3::cuda {

struct Blas::Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
  bool ok = false;
};

Blas::Blas() {
  cublasLtHandle_t h = nullptr;
  DSV3_CUBLAS_CHECK(cublasLtCreate(&h));
  handle_ = h;
}

Blas::~Blas() {
  for (auto& [shape, p] : plans_) {
    if (p->desc) cublasLtMatmulDescDestroy(p->desc);
    if (p->a) cublasLtMatrixLayoutDestroy(p->a);
    if (p->b) cublasLtMatrixLayoutDestroy(p->b);
    if (p->c) cublasLtMatrixLayoutDestroy(p->c);
    delete p;
  }
  if (handle_) cublasLtDestroy(static_cast<cublasLtHandle_t>(handle_));
}

Blas::Plan* Blas::plan(const Key& key, size_t workspace_bytes, const float* w_scale,
                       const float* x_scale) {
  auto h = static_cast<cublasLtHandle_t>(handle_);
  Plan*& p = plans_[key];
  if (p) return p;
  p = new Plan;
  const auto [kind, w_rows_n, y_bf16, m, n, k, ldx, ldw, ldy] = key.tie();
  const bool fp8 = kind == In::E4M3;
  // Column-major view: yᵀ [n, m] = op(w) · xᵀ [k, m], op(w) [n, k]: w [n, k] row-major is
  // [k, n] column-major (transposed), w [k, n] row-major is [n, k] column-major (as it is).
  DSV3_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = w_rows_n ? CUBLAS_OP_T : CUBLAS_OP_N, tb = CUBLAS_OP_N;
  DSV3_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
  DSV3_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
  const cudaDataType_t in = fp8 ? CUDA_R_8F_E4M3 : kind == In::F32 ? CUDA_R_32F : CUDA_R_16BF;
  if (fp8) {
    const cublasLtMatmulMatrixScale_t am = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F,
                                      bm = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
    DSV3_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &am, sizeof am));
    DSV3_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &bm, sizeof bm));
    // The heuristic finds no algorithm while the scale pointers are unset (seen on the H200,
    // cuBLASLt 13.1): give it the first call's; later calls set their own.
    DSV3_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                                                     &w_scale, sizeof w_scale));
    DSV3_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                                                     &x_scale, sizeof x_scale));
  }
  if (w_rows_n)
    DSV3_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->a, in, uint64_t(k), uint64_t(n), ldw));
  else
    DSV3_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->a, in, uint64_t(n), uint64_t(k), ldw));
  DSV3_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->b, in, uint64_t(k), uint64_t(m), ldx));
  DSV3_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->c, y_bf16 ? CUDA_R_16BF : CUDA_R_32F,
                                               uint64_t(n), uint64_t(m), ldy));
  cublasLtMatmulPreference_t pref = nullptr;
  DSV3_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  DSV3_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes, sizeof workspace_bytes));
  cublasLtMatmulHeuristicResult_t r{};
  int found = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(h, p->desc, p->a, p->b, p->c, p->c, pref, 1, &r, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  p->ok = st == CUBLAS_STATUS_SUCCESS && found > 0;
  if (p->ok) {
    p->algo = r.algo;
    p->workspace = r.workspaceSize;
  }
  return p;
}

void Blas::run(const Plan& p, const void* x, const void* w, void* y, void* workspace,
               size_t workspace_bytes, cudaStream_t s) {
  const float alpha = 1.0f, beta = 0.0f;
  DSV3_CUBLAS_CHECK(cublasLtMatmul(static_cast<cublasLtHandle_t>(handle_), p.desc, &alpha, w, p.a,
                                   x, p.b, &beta, y, p.c, y, p.c, &p.algo, workspace,
                                   workspace_bytes, s));
}

bool Blas::matmul_bf16(int64_t m, int64_t n, int64_t k, const void* x, const void* w, float* y,
                       void* workspace, size_t workspace_bytes, cudaStream_t s) {
  return gemm_bf16(true, m, n, k, x, k, w, k, y, n, false, workspace, workspace_bytes, s);
}

bool Blas::gemm_bf16(bool w_rows_n, int64_t m, int64_t n, int64_t k, const void* x, int64_t ldx,
                     const void* w, int64_t ldw, void* y, int64_t ldy, bool y_bf16, void* workspace,
                     size_t workspace_bytes, cudaStream_t s) {
  const Plan* p = plan({In::BF16, w_rows_n, y_bf16, m, n, k, ldx, ldw, ldy}, workspace_bytes);
  if (!p->ok) return false;
  run(*p, x, w, y, workspace, workspace_bytes, s);
  return true;
}

bool Blas::matmul_f32(int64_t m, int64_t n, int64_t k, const float* x, const float* w, float* y,
                      void* workspace, size_t workspace_bytes, cudaStream_t s) {
  const Plan* p = plan({In::F32, true, false, m, n, k, k, k, n}, workspace_bytes);
  if (!p->ok) return false;
  run(*p, x, w, y, workspace, workspace_bytes, s);
  return true;
}

bool Blas::matmul_fp8_block(int64_t m, int64_t n, int64_t k, const void* x, const float* x_scale,
                            const void* w, const float* w_scale, float* y, void* workspace,
                            size_t workspace_bytes, cudaStream_t s) {
  if (k % 128 != 0 || m % 16 != 0) return false;
  const Plan* p =
      plan({In::E4M3, true, false, m, n, k, k, k, n}, workspace_bytes, w_scale, x_scale);
  if (!p->ok) return false;
  // The scale pointers are part of the descriptor; setting them is a host-side store.
  DSV3_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                                                   &w_scale, sizeof w_scale));
  DSV3_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                                                   &x_scale, sizeof x_scale));
  run(*p, x, w, y, workspace, workspace_bytes, s);
  return true;
}

}  // namespace dsv3::cuda
