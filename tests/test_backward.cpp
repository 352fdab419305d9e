// Backward of every training op (src/train/ops.h), checked three ways:
//  1. every analytic gradient element against a central finite difference of
//     L = Σ output ⊙ R (R random; or the loss itself for the losses) in float64, step
//     1e-6·max(1, |x|). Required: max relative error ≤ 1e-6, where an element's error is
//     |a − n| / max(|a|, |n|, floor), floor = 1e-2·max_i |a_i| over the tensor. The floor keeps
//     exactly-zero gradients (unselected experts) from dividing by zero and holds elements far
//     below the largest to an absolute 1e-8·max, about the FD rounding limit ε·|L|/h;
//  2. the float instantiation against the double one: max |g32 − g64| / max |g64| ≤ 1e-4 per
//     tensor (and the same for L);
//  3. the f32 forwards against the inference kernels (src/kernels, tested separately against
//     float64 math) and route_tokens, so forward and backward describe the model we serve.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <type_traits>

#include "core/error.h"
#include "kernels/cpu/cpu_kernels.h"
#include "model/moe.h"
#include "train/ops.h"

using namespace dsv3;
using namespace dsv3::train;

namespace {

using Vec = std::vector<double>;
using Vecs = std::vector<Vec>;

constexpr double kFdTol = 1e-6;
constexpr double kF32Tol = 1e-4;

Vec randn(size_t n, uint32_t seed, double scale = 1.0) {
  std::mt19937 g(seed);
  std::normal_distribution<double> d(0.0, scale);
  Vec v(n);
  for (auto& x : v) x = d(g);
  return v;
}

template <typename T>
std::vector<T> cast(const Vec& v) {
  return std::vector<T>(v.begin(), v.end());
}

template <typename T>
Vec to_d(const std::vector<T>& v) {
  return Vec(v.begin(), v.end());
}

// L = Σ a ⊙ r, summed in long double: the FD difference of two such sums should carry only
// the op's own rounding, not that of a long f64 running sum.
template <typename T>
double dot(const std::vector<T>& a, const Vec& r) {
  long double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += (long double)a[i] * r[i];
  return double(s);
}

// An op under test: (type tag, inputs, grads or null) → L. With grads non-null it resizes
// grads to inputs.size() and fills grads[i] for the differentiable inputs.
using F64 = std::type_identity<double>;
using F32 = std::type_identity<float>;

// Finite-difference check of the inputs listed in `diff`; returns the worst relative error.
template <class Op>
double fd_check(const char* what, Op& op, Vecs in, const std::vector<size_t>& diff,
                size_t max_per_tensor = 300) {
  Vecs g;
  op(F64{}, in, &g);
  double worst = 0;
  std::mt19937 pick(7);
  for (size_t p : diff) {
    const Vec& a = g[p];
    EXPECT_EQ(a.size(), in[p].size()) << what << " input " << p;
    double amax = 0;
    for (double x : a) amax = std::max(amax, std::abs(x));
    const double floor = std::max(1e-2 * amax, 1e-300);
    std::vector<size_t> idx(a.size());
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
    if (idx.size() > max_per_tensor) {
      std::shuffle(idx.begin(), idx.end(), pick);
      idx.resize(max_per_tensor);
    }
    for (size_t i : idx) {
      const double x0 = in[p][i], h = 1e-6 * std::max(1.0, std::abs(x0));
      in[p][i] = x0 + h;
      const double lp = op(F64{}, in, nullptr);
      in[p][i] = x0 - h;
      const double lm = op(F64{}, in, nullptr);
      in[p][i] = x0;
      const double num = (lp - lm) / (2 * h);
      const double err = std::abs(a[i] - num) / std::max({std::abs(a[i]), std::abs(num), floor});
      EXPECT_LE(err, kFdTol) << what << ": input " << p << " element " << i << " analytic " << a[i]
                             << " numeric " << num;
      worst = std::max(worst, err);
    }
  }
  return worst;
}

// The float instantiation against the double one.
template <class Op>
void f32_check(const char* what, Op& op, const Vecs& in, const std::vector<size_t>& diff) {
  Vecs g64, g32;
  const double l64 = op(F64{}, in, &g64), l32 = op(F32{}, in, &g32);
  EXPECT_LE(std::abs(l32 - l64), kF32Tol * std::max(1.0, std::abs(l64))) << what << " loss";
  for (size_t p : diff) {
    double num = 0, den = 0;
    for (size_t i = 0; i < g64[p].size(); ++i) {
      num = std::max(num, std::abs(g32[p][i] - g64[p][i]));
      den = std::max(den, std::abs(g64[p][i]));
    }
    EXPECT_LE(num, kF32Tol * den) << what << ": f32 gradient of input " << p;
  }
}

template <class Op>
void check_op(const char* what, Op op, const Vecs& in, const std::vector<size_t>& diff) {
  fd_check(what, op, in, diff);
  f32_check(what, op, in, diff);
}

std::vector<float> to_f(const Vec& v) {
  return cast<float>(v);
}

}  // namespace

// ---------------------------------------------------------------- element / row ops

TEST(Backward, Embedding) {
  const int64_t vocab = 7, dim = 5;
  const std::vector<int32_t> ids = {3, 0, 3, 6, 2, 3};  // repeats: the scatter must add
  const int64_t n = int64_t(ids.size());
  auto op = [&](auto tag, const Vecs& in, Vecs* g) {
    using T = typename decltype(tag)::type;
    const auto table = cast<T>(in[0]);
    std::vector<T> out(static_cast<size_t>(n * dim));
    embedding_forward(ids.data(), n, table.data(), vocab, dim, out.data());
    if (g) {
      g->assign(in.size(), {});
      std::vector<T> dt(table.size(), T(0));
      embedding_backward(ids.data(), n, cast<T>(in[1]).data(), vocab, dim, dt.data());
      (*g)[0] = to_d(dt);
    }
    return dot(out, in[1]);
  };
  check_op("embedding", op, {randn(size_t(vocab * dim), 1), randn(size_t(n * dim), 2)}, {0});
  const std::vector<int32_t> bad = {7};
  std::vector<float> t(static_cast<size_t>(vocab * dim)), o(static_cast<size_t>(dim));
  EXPECT_THROW(embedding_forward(bad.data(), 1, t.data(), vocab, dim, o.data()), Error);
}

TEST(Backward, RmsNorm) {
  const int64_t rows = 4, dim = 8;
  Vec x = randn(size_t(rows * dim), 3);
  for (int64_t i = 0; i < dim; ++i) x[size_t(dim + i)] *= 1e-3;  // a row where eps matters
  const Vec w = randn(size_t(dim), 4, 0.5);
  const double eps = 1e-6;
  auto op = [&](auto tag, const Vecs& in, Vecs* g) {
    using T = typename decltype(tag)::type;
    const auto xv = cast<T>(in[0]), wv = cast<T>(in[1]);
    std::vector<T> y(xv.size());
    rmsnorm_forward(xv.data(), wv.data(), rows, dim, T(eps), y.data());
    if (g) {
      g->assign(in.size(), {});
      std::vector<T> dx(xv.size(), T(0)), dw(wv.size(), T(0));
      rmsnorm_backward(xv.data(), wv.data(), cast<T>(in[2]).data(), rows, dim, T(eps), dx.data(),
                       dw.data());
      (*g)[0] = to_d(dx);
      (*g)[1] = to_d(dw);
    }
    return dot(y, in[2]);
  };
  check_op("rmsnorm", op, {x, w, randn(size_t(rows * dim), 5)}, {0, 1});
}

TEST(Backward, Linear) {
  for (auto [rows, in_f, out_f] : {std::tuple<int64_t, int64_t, int64_t>{4, 6, 5}, {1, 9, 3}}) {
    auto op = [&](auto tag, const Vecs& in, Vecs* g) {
      using T = typename decltype(tag)::type;
      const auto x = cast<T>(in[0]), W = cast<T>(in[1]);
      std::vector<T> y(static_cast<size_t>(rows * out_f));
      linear_forward(x.data(), W.data(), rows, in_f, out_f, y.data());
      if (g) {
        g->assign(in.size(), {});
        std::vector<T> dx(x.size(), T(0)), dW(W.size(), T(0));
        linear_backward(x.data(), W.data(), cast<T>(in[2]).data(), rows, in_f, out_f, dx.data(),
                        dW.data());
        (*g)[0] = to_d(dx);
        (*g)[1] = to_d(dW);
      }
      return dot(y, in[2]);
    };
    check_op("linear", op,
             {randn(static_cast<size_t>(rows * in_f), 6),
              randn(static_cast<size_t>(out_f * in_f), 7, 0.3),
              randn(static_cast<size_t>(rows * out_f), 8)},
             {0, 1});
  }
}

TEST(Backward, LinearSplitAcrossThreads) {
  // Large enough that forward, dx and dW are split into column blocks over the pool (and BLAS
  // takes its blocked paths); checked against plain loops in long double.
  const int64_t rows = 64, in_f = 300, out_f = 200;
  const Vec x = randn(size_t(rows * in_f), 100), W = randn(size_t(out_f * in_f), 101, 0.1),
            dy = randn(size_t(rows * out_f), 102);
  Vec y_ref(size_t(rows * out_f)), dx_ref(size_t(rows * in_f)), dW_ref(size_t(out_f * in_f));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out_f; ++o) {
      long double s = 0;
      for (int64_t i = 0; i < in_f; ++i)
        s += (long double)x[size_t(r * in_f + i)] * W[size_t(o * in_f + i)];
      y_ref[size_t(r * out_f + o)] = double(s);
    }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < in_f; ++i) {
      long double s = 0;
      for (int64_t o = 0; o < out_f; ++o)
        s += (long double)dy[size_t(r * out_f + o)] * W[size_t(o * in_f + i)];
      dx_ref[size_t(r * in_f + i)] = double(s);
    }
  for (int64_t o = 0; o < out_f; ++o)
    for (int64_t i = 0; i < in_f; ++i) {
      long double s = 0;
      for (int64_t r = 0; r < rows; ++r)
        s += (long double)dy[size_t(r * out_f + o)] * x[size_t(r * in_f + i)];
      dW_ref[size_t(o * in_f + i)] = double(s);
    }
  auto run = [&](auto tag, double tol) {
    using T = typename decltype(tag)::type;
    const auto xt = cast<T>(x), Wt = cast<T>(W), dyt = cast<T>(dy);
    std::vector<T> y(y_ref.size()), dx(dx_ref.size(), T(0)), dW(dW_ref.size(), T(0));
    linear_forward(xt.data(), Wt.data(), rows, in_f, out_f, y.data());
    linear_backward(xt.data(), Wt.data(), dyt.data(), rows, in_f, out_f, dx.data(), dW.data());
    for (auto [got, ref] : {std::pair{&y, &y_ref}, {&dx, &dx_ref}, {&dW, &dW_ref}}) {
      double err = 0, mx = 0;
      for (size_t i = 0; i < ref->size(); ++i) {
        err = std::max(err, std::abs(double((*got)[i]) - (*ref)[i]));
        mx = std::max(mx, std::abs((*ref)[i]));
      }
      EXPECT_LE(err, tol * mx) << (sizeof(T) == 4 ? "f32" : "f64");
    }
  };
  run(F64{}, 1e-13);
  run(F32{}, kF32Tol);
}

TEST(Backward, SwiGlu) {
  const int64_t n = 24;
  auto op = [&](auto tag, const Vecs& in, Vecs* g) {
    using T = typename decltype(tag)::type;
    const auto gv = cast<T>(in[0]), uv = cast<T>(in[1]);
    std::vector<T> out(static_cast<size_t>(n));
    swiglu_forward(gv.data(), uv.data(), n, out.data());
    if (g) {
      g->assign(in.size(), {});
      std::vector<T> dg(size_t(n), T(0)), du(size_t(n), T(0));
      swiglu_backward(gv.data(), uv.data(), cast<T>(in[2]).data(), n, dg.data(), du.data());
      (*g)[0] = to_d(dg);
      (*g)[1] = to_d(du);
    }
    return dot(out, in[2]);
  };
  check_op("swiglu", op, {randn(size_t(n), 9, 2.0), randn(size_t(n), 10), randn(size_t(n), 11)},
           {0, 1});
}

TEST(Backward, RopeInterleaved) {
  // [T=3, 2 vectors, width 10], rotated slice [2, 8): entries outside pass through.
  const int64_t rows = 3, vecs = 2, width = 10, offset = 2;
  const std::vector<float> inv_freq = {1.0f, 0.1f, 0.01f};
  const std::vector<int32_t> pos = {0, 5, 1000};
  const float factor = 1.3f;
  auto op = [&](auto tag, const Vecs& in, Vecs* g) {
    using T = typename decltype(tag)::type;
    auto x = cast<T>(in[0]);
    rope_forward(x.data(), rows, vecs, width, offset, inv_freq, factor, pos.data());
    if (g) {
      g->assign(in.size(), {});
      auto dx = cast<T>(in[1]);
      rope_backward(dx.data(), rows, vecs, width, offset, inv_freq, factor, pos.data());
      (*g)[0] = to_d(dx);
    }
    return dot(x, in[1]);
  };
  const size_t n = size_t(rows * vecs * width);
  check_op("rope", op, {randn(n, 12), randn(n, 13)}, {0});
}

TEST(Backward, CausalAttention) {
  const int64_t T_ = 5, H = 2, dqk = 6, dv = 4;
  const double scale = 0.4;
  auto op = [&](auto tag, const Vecs& in, Vecs* g) {
    using T = typename decltype(tag)::type;
    const auto q = cast<T>(in[0]), k = cast<T>(in[1]), v = cast<T>(in[2]);
    std::vector<T> out(static_cast<size_t>(T_ * H * dv));
    attention_forward(q.data(), k.data(), v.data(), T_, H, dqk, dv, T(scale), out.data());
    if (g) {
      g->assign(in.size(), {});
      std::vector<T> dq(q.size(), T(0)), dk(k.size(), T(0)), dvv(v.size(), T(0));
      attention_backward(q.data(), k.data(), v.data(), cast<T>(in[3]).data(), T_, H, dqk, dv,
                         T(scale), dq.data(), dk.data(), dvv.data());
      (*g)[0] = to_d(dq);
      (*g)[1] = to_d(dk);
      (*g)[2] = to_d(dvv);
    }
    return dot(out, in[3]);
  };
  const size_t nq = size_t(T_ * H * dqk), nv = size_t(T_ * H * dv);
  check_op("attention", op, {randn(nq, 14), randn(nq, 15), randn(nv, 16), randn(nv, 17)},
           {0, 1, 2});
}

// ---------------------------------------------------------------- MoE gate and balance loss

namespace {

// The gate as an op: L = Σ weights ⊙ R. Records whether any evaluation selected differently
// from the first one, so the test can assert the selection was stable under the FD steps.
struct GateOp {
  GateConfig c;
  int64_t tokens;
  Vec bias;
  std::vector<int32_t> first;
  bool changed = false;

  template <class Tag>
  double operator()(Tag, const Vecs& in, Vecs* g) {
    using T = typename Tag::type;
    const auto logits = cast<T>(in[0]), b = cast<T>(bias);
    std::vector<int32_t> ex(static_cast<size_t>(tokens * c.k));
    std::vector<T> w(ex.size());
    moe_gate_forward(c, logits.data(), b.data(), tokens, ex.data(), w.data());
    if (first.empty()) first = ex;
    changed |= ex != first;
    if (g) {
      g->assign(in.size(), {});
      std::vector<T> dl(logits.size(), T(0));
      moe_gate_backward(c, logits.data(), ex.data(), cast<T>(in[1]).data(), tokens, dl.data());
      (*g)[0] = to_d(dl);
    }
    return dot(w, in[1]);
  }
};

ModelConfig gate_model_config(const GateConfig& g) {
  ModelConfig c;
  c.n_routed_experts = g.n_experts;
  c.num_experts_per_tok = g.k;
  c.n_group = g.n_group;
  c.topk_group = g.topk_group;
  c.norm_topk_prob = g.norm_topk_prob;
  c.routed_scaling_factor = g.routed_scaling_factor;
  c.scoring_func = "sigmoid";
  c.topk_method = "noaux_tc";
  return c;
}

void check_gate(const GateConfig& c, int64_t tokens, uint32_t seed) {
  GateOp op{c, tokens, randn(size_t(c.n_experts), seed, 0.1), {}, false};
  const Vecs in = {randn(size_t(tokens * c.n_experts), seed + 1, 1.5),
                   randn(size_t(tokens * c.k), seed + 2)};
  const double worst = fd_check("moe gate", op, in, {0});
  EXPECT_FALSE(op.changed) << "selection moved under the FD step: pick other logits";
  EXPECT_LE(worst, kFdTol);
  f32_check("moe gate", op, in, {0});
  EXPECT_FALSE(op.changed) << "f32 selected other experts than f64";

  // The selection and weights are route_tokens' (the inference router), in f32.
  const ModelConfig mc = gate_model_config(c);
  const GateConfig back = GateConfig::from(mc);
  EXPECT_EQ(back.n_group, c.n_group);
  const auto lf = to_f(in[0]), bf = to_f(op.bias);
  const Routing r = route_tokens(mc, lf.data(), bf.data(), tokens);
  std::vector<int32_t> ex(static_cast<size_t>(tokens * c.k));
  std::vector<float> w(ex.size());
  moe_gate_forward(c, lf.data(), bf.data(), tokens, ex.data(), w.data());
  EXPECT_EQ(ex, r.expert);
  for (size_t i = 0; i < w.size(); ++i)
    EXPECT_NEAR(w[i], r.weight[i], 1e-6 * std::abs(r.weight[i]));
}

}  // namespace

TEST(Backward, MoeGateSingleGroup) {
  GateConfig c;
  c.n_experts = 8;
  c.k = 3;
  c.routed_scaling_factor = 2.5;
  c.norm_topk_prob = true;
  check_gate(c, 5, 20);
  c.norm_topk_prob = false;
  check_gate(c, 5, 30);
}

TEST(Backward, MoeGateGrouped) {
  GateConfig c;
  c.n_experts = 16;
  c.k = 4;
  c.n_group = 4;
  c.topk_group = 2;
  c.routed_scaling_factor = 2.5;
  check_gate(c, 6, 40);

  // The grouped path must actually restrict: every token's experts lie in ≤ 2 groups, and for
  // some token the ungrouped top-4 would have reached into a third group.
  const int64_t tokens = 6;
  const Vec logits = randn(size_t(tokens * c.n_experts), 41, 1.5), bias = randn(16, 40, 0.1);
  std::vector<int32_t> ex(static_cast<size_t>(tokens * c.k)), ex1(ex.size());
  Vec w(ex.size());
  moe_gate_forward(c, logits.data(), bias.data(), tokens, ex.data(), w.data());
  GateConfig flat = c;
  flat.n_group = flat.topk_group = 1;
  moe_gate_forward(flat, logits.data(), bias.data(), tokens, ex1.data(), w.data());
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<int> groups;
    for (int64_t j = 0; j < c.k; ++j) groups.push_back(ex[size_t(t * c.k + j)] / 4);
    std::sort(groups.begin(), groups.end());
    EXPECT_LE(std::unique(groups.begin(), groups.end()) - groups.begin(), 2);
  }
  EXPECT_NE(ex, ex1) << "pick logits where group limiting changes some token's experts";
}

TEST(Backward, BalanceLoss) {
  const int64_t tokens = 6, E = 8, k = 2;
  const double alpha = 0.37;  // large, so the loss is not tiny next to rounding
  const Vec logits0 = randn(size_t(tokens * E), 50);
  GateConfig c;
  c.n_experts = E;
  c.k = k;
  std::vector<int32_t> ex(static_cast<size_t>(tokens * k));
  Vec w(ex.size());
  moe_gate_forward(c, logits0.data(), static_cast<const double*>(nullptr), tokens, ex.data(),
                   w.data());
  // The selection is a constant of the loss (it carries no gradient), so FD keeps it fixed.
  auto op = [&](auto tag, const Vecs& in, Vecs* g) {
    using T = typename decltype(tag)::type;
    const auto l = cast<T>(in[0]);
    std::vector<T> dl(l.size(), T(0));
    const T loss =
        balance_loss(l.data(), ex.data(), tokens, E, k, T(alpha), g ? dl.data() : nullptr);
    if (g) {
      g->assign(in.size(), {});
      (*g)[0] = to_d(dl);
    }
    return double(loss);
  };
  check_op("balance loss", op, {logits0}, {0});

  // The value, straight from TRAINING_SPEC §2.
  double ref = 0;
  for (int64_t i = 0; i < E; ++i) {
    double cnt = 0, P = 0;
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t j = 0; j < k; ++j) cnt += ex[size_t(t * k + j)] == i;
      double sum = 0;
      for (int64_t e = 0; e < E; ++e) sum += 1 / (1 + std::exp(-logits0[size_t(t * E + e)]));
      P += 1 / (1 + std::exp(-logits0[size_t(t * E + i)])) / sum / double(tokens);
    }
    ref += alpha * (double(E) / double(k * tokens) * cnt) * P;
  }
  EXPECT_NEAR(
      balance_loss(logits0.data(), ex.data(), tokens, E, k, alpha, static_cast<double*>(nullptr)),
      ref, 1e-14);
}

// ---------------------------------------------------------------- cross-entropy

TEST(Backward, CrossEntropy) {
  const int64_t N = 5, V = 7;
  const std::vector<int32_t> tgt = {3, -1, 0, 6, 2};  // row 1 ignored
  const double scale = 0.3;
  auto op = [&](auto tag, const Vecs& in, Vecs* g) {
    using T = typename decltype(tag)::type;
    const auto l = cast<T>(in[0]);
    std::vector<T> dl(l.size(), T(7));  // written, not accumulated: the 7s must vanish
    const T loss = cross_entropy(l.data(), tgt.data(), N, V, g ? dl.data() : nullptr, T(scale));
    if (g) {
      g->assign(in.size(), {});
      (*g)[0] = to_d(dl);
      for (auto& x : (*g)[0]) x /= scale;  // the gradient of the (unscaled) mean loss
    }
    return double(loss);
  };
  const Vec logits = randn(static_cast<size_t>(N * V), 60, 2.0);
  check_op("cross-entropy", op, {logits}, {0});

  // Value: −log softmax[target] from the definition (long double), mean over counted rows.
  long double ref = 0;
  for (int64_t r : {0, 2, 3, 4}) {
    long double mx = -INFINITY, s = 0;
    for (int64_t i = 0; i < V; ++i) mx = std::max(mx, (long double)logits[size_t(r * V + i)]);
    for (int64_t i = 0; i < V; ++i) s += std::exp((long double)logits[size_t(r * V + i)] - mx);
    ref += mx + std::log(s) - logits[size_t(r * V + tgt[size_t(r)])];
  }
  EXPECT_NEAR(cross_entropy(logits.data(), tgt.data(), N, V, static_cast<double*>(nullptr)),
              double(ref / 4), 1e-12);

  // d logits may overwrite the logits; all-ignored rows give loss 0 and zero gradient.
  Vec apart(logits.size()), inplace = logits;
  const double l1 = cross_entropy(logits.data(), tgt.data(), N, V, apart.data());
  const double l2 = cross_entropy(inplace.data(), tgt.data(), N, V, inplace.data());
  EXPECT_EQ(l1, l2);
  EXPECT_EQ(apart, inplace);
  const std::vector<int32_t> none(size_t(N), -1);
  EXPECT_EQ(cross_entropy(logits.data(), none.data(), N, V, apart.data()), 0.0);
  for (double x : apart) EXPECT_EQ(x, 0.0);
  // Softmax is shift-invariant: a row raised by 100 (exp overflows f32 there, and f64 past
  // 709) gives the same loss and d logits, in both precisions.
  for (double shift : {100.0, 800.0}) {
    Vec shifted = logits;
    for (int64_t i = 0; i < V; ++i) shifted[static_cast<size_t>(2 * V + i)] += shift;
    Vec d1(logits.size()), d2(logits.size());
    const double a = cross_entropy(logits.data(), tgt.data(), N, V, d1.data());
    const double b = cross_entropy(shifted.data(), tgt.data(), N, V, d2.data());
    EXPECT_NEAR(a, b, 1e-12 * shift);
    for (size_t i = 0; i < d1.size(); ++i) EXPECT_NEAR(d1[i], d2[i], 1e-12 * shift);
    const auto f1 = to_f(logits), f2 = to_f(shifted);
    std::vector<float> e1(f1.size()), e2(f1.size());
    const float fa = cross_entropy(f1.data(), tgt.data(), N, V, e1.data());
    const float fb = cross_entropy(f2.data(), tgt.data(), N, V, e2.data());
    EXPECT_TRUE(std::isfinite(fb));
    EXPECT_NEAR(fa, fb, 1e-6 * shift);
    for (size_t i = 0; i < e1.size(); ++i) EXPECT_NEAR(e1[i], e2[i], 1e-6 * shift);
  }
  const std::vector<int32_t> bad = {0, 0, 7, 0, 0};
  EXPECT_THROW(cross_entropy(logits.data(), bad.data(), N, V, apart.data()), Error);
}

// ---------------------------------------------------------------- composition

TEST(Backward, LayerChainRmsNormSwiGluCrossEntropy) {
  // x → rmsnorm(w) → h; g = h·Wgᵀ, u = h·Wuᵀ (h used twice: its gradients must add);
  // a = silu(g) ⊙ u; logits = a·Wdᵀ; L = cross-entropy(logits, targets).
  const int64_t N = 4, D = 6, F = 5, V = 7;
  const std::vector<int32_t> tgt = {1, 6, -1, 0};
  const double eps = 1e-6;
  auto op = [&](auto tag, const Vecs& in, Vecs* g) {
    using T = typename decltype(tag)::type;
    const auto x = cast<T>(in[0]), w = cast<T>(in[1]), Wg = cast<T>(in[2]), Wu = cast<T>(in[3]),
               Wd = cast<T>(in[4]);
    std::vector<T> h(static_cast<size_t>(N * D)), gt(static_cast<size_t>(N * F)), u(gt.size()),
        a(gt.size()), logits(static_cast<size_t>(N * V));
    rmsnorm_forward(x.data(), w.data(), N, D, T(eps), h.data());
    linear_forward(h.data(), Wg.data(), N, D, F, gt.data());
    linear_forward(h.data(), Wu.data(), N, D, F, u.data());
    swiglu_forward(gt.data(), u.data(), N * F, a.data());
    linear_forward(a.data(), Wd.data(), N, F, V, logits.data());
    const T loss = cross_entropy(logits.data(), tgt.data(), N, V, g ? logits.data() : nullptr);
    if (g) {
      std::vector<T> dx(x.size(), 0), dw(w.size(), 0), dWg(Wg.size(), 0), dWu(Wu.size(), 0),
          dWd(Wd.size(), 0), dh(h.size(), 0), dg(gt.size(), 0), du(u.size(), 0), da(a.size(), 0);
      linear_backward(a.data(), Wd.data(), logits.data(), N, F, V, da.data(), dWd.data());
      swiglu_backward(gt.data(), u.data(), da.data(), N * F, dg.data(), du.data());
      linear_backward(h.data(), Wg.data(), dg.data(), N, D, F, dh.data(), dWg.data());
      linear_backward(h.data(), Wu.data(), du.data(), N, D, F, dh.data(), dWu.data());
      rmsnorm_backward(x.data(), w.data(), dh.data(), N, D, T(eps), dx.data(), dw.data());
      *g = {to_d(dx), to_d(dw), to_d(dWg), to_d(dWu), to_d(dWd)};
    }
    return double(loss);
  };
  check_op("layer chain", op,
           {randn(size_t(N * D), 70), randn(size_t(D), 71, 1.0), randn(size_t(F * D), 72, 0.5),
            randn(size_t(F * D), 73, 0.5), randn(size_t(V * F), 74, 0.5)},
           {0, 1, 2, 3, 4});
}

TEST(Backward, GradientsAccumulate) {
  // Every backward adds into its outputs: running it twice gives twice the gradient.
  const int64_t rows = 3, in_f = 4, out_f = 5;
  const Vec x = randn(12, 80), W = randn(20, 81), dy = randn(15, 82);
  Vec dx1(12, 0.0), dW1(20, 0.0), dx2(12, 0.0), dW2(20, 0.0);
  linear_backward(x.data(), W.data(), dy.data(), rows, in_f, out_f, dx1.data(), dW1.data());
  for (int i = 0; i < 2; ++i)
    linear_backward(x.data(), W.data(), dy.data(), rows, in_f, out_f, dx2.data(), dW2.data());
  for (size_t i = 0; i < 12; ++i) EXPECT_NEAR(dx2[i], 2 * dx1[i], 1e-12);
  for (size_t i = 0; i < 20; ++i) EXPECT_NEAR(dW2[i], 2 * dW1[i], 1e-12);
  Vec dxr(12, 0.0), dwr(4, 0.0);
  rmsnorm_backward(x.data(), W.data(), dx1.data(), rows, in_f, 1e-6, dxr.data(), dwr.data());
  Vec dxr2 = dxr, dwr2 = dwr;
  rmsnorm_backward(x.data(), W.data(), dx1.data(), rows, in_f, 1e-6, dxr2.data(), dwr2.data());
  for (size_t i = 0; i < 12; ++i) EXPECT_NEAR(dxr2[i], 2 * dxr[i], 1e-12);
  for (size_t i = 0; i < 4; ++i) EXPECT_NEAR(dwr2[i], 2 * dwr[i], 1e-12);
}

// ---------------------------------------------------------------- forwards vs inference kernels

TEST(Backward, ForwardsMatchInferenceKernels) {
  const int64_t rows = 5, dim = 16, out_f = 70;
  const auto x = to_f(randn(size_t(rows * dim), 90)), w = to_f(randn(size_t(dim), 91));
  auto close = [](const std::vector<float>& a, const float* b, double tol, const char* what) {
    double err = 0, mx = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      err = std::max(err, double(std::abs(a[i] - b[i])));
      mx = std::max(mx, double(std::abs(b[i])));
    }
    EXPECT_LE(err, tol * mx) << what;
  };
  {
    Tensor wt = Tensor::zeros(DType::F32, {dim});
    std::copy(w.begin(), w.end(), wt.ptr<float>());
    std::vector<float> a(x.size()), b(x.size());
    rmsnorm_forward(x.data(), w.data(), rows, dim, 1e-6f, a.data());
    cpu::rmsnorm(x.data(), rows, dim, wt, 1e-6f, b.data());
    close(a, b.data(), 1e-6, "rmsnorm");
  }
  {
    const auto W = to_f(randn(size_t(out_f * dim), 92));
    Linear lin;
    lin.weight = Tensor::zeros(DType::F32, {out_f, dim});
    std::copy(W.begin(), W.end(), lin.weight.ptr<float>());
    std::vector<float> a(static_cast<size_t>(rows * out_f)), b(a.size());
    linear_forward(x.data(), W.data(), rows, dim, out_f, a.data());
    cpu::linear(x.data(), rows, lin, b.data());
    close(a, b.data(), 1e-5, "linear");
  }
  {
    std::vector<float> a(x.size()), b(x.size());
    swiglu_forward(x.data(), x.data() + 8, int64_t(x.size()) - 8, a.data());
    cpu::silu_mul(x.data(), x.data() + 8, b.data(), int64_t(x.size()) - 8);
    a.resize(x.size() - 8);
    close(a, b.data(), 1e-6, "swiglu");
  }
  {
    const std::vector<float> inv_freq = {1.0f, 0.3f, 0.05f};
    const std::vector<int32_t> pos = {0, 3, 77, 4095, 12};
    auto a = x, b = x;  // [5 rows, 2 vectors of 8], slice [2, 8)
    rope_forward(a.data(), rows, 2, 8, 2, inv_freq, 1.2f, pos.data());
    cpu::rope_interleaved(b.data(), rows, 2, 8, 2, inv_freq, 1.2f, pos.data());
    close(a, b.data(), 1e-6, "rope");
  }
  {
    const int64_t T_ = 5, H = 2, dqk = 4, dv = 3;
    const auto q = to_f(randn(40, 93)), k = to_f(randn(40, 94)), v = to_f(randn(30, 95));
    std::vector<float> a(30), b(30);
    attention_forward(q.data(), k.data(), v.data(), T_, H, dqk, dv, 0.5f, a.data());
    cpu::attention_causal(q.data(), k.data(), v.data(), T_, H, dqk, dv, 0.5f, b.data());
    close(a, b.data(), 1e-5, "attention");
  }
}
