#include "infer/sampler.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <limits>
#include <random>

#include "core/error.h"
#include "core/exp_nonpos.h"

namespace dsv3::infer {

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

uint64_t splitmix64(uint64_t& state) {
  state += 0x9E3779B97F4A7C15ULL;
  uint64_t z = state;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

uint64_t rotl(uint64_t x, int k) {
  return (x << k) | (x >> (64 - k));
}

uint64_t fresh_seed() {
  std::random_device rd;
  return (uint64_t(rd()) << 32) ^ uint64_t(rd());
}

// w[i] = exp_nonpos(x[i] - mx); returns their float64 sum, accumulated in 8 interleaved partial
// sums (a fixed order, so the result is reproducible, and 8 independent chains for speed).
double exp_weights(std::span<const float> x, float mx, std::vector<float>& w) {
  const size_t n = x.size();
  w.resize(n);
  for (size_t i = 0; i < n; ++i) w[i] = exp_nonpos(x[i] - mx);
  double acc[8] = {};
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += w[i + size_t(j)];
  }
  for (; i < n; ++i) acc[0] += w[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Largest finite logit; throws on NaN/+inf (a broken forward pass must not turn into a token).
struct Scan {
  float max = -kInf;
  size_t finite = 0;
};

Scan scan(std::span<const float> x) {
  // 16 independent lanes, combined in a fixed order, so the loop vectorizes; a single running
  // max would be one long dependency chain.
  constexpr size_t kLanes = 16;
  float mx[kLanes];
  int32_t bad[kLanes], fin[kLanes];
  for (size_t j = 0; j < kLanes; ++j) mx[j] = -kInf, bad[j] = 0, fin[j] = 0;
  const float* p = x.data();
  const size_t n = x.size();
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (size_t j = 0; j < kLanes; ++j) {
      const float v = p[i + j];
      mx[j] = std::max(mx[j], v);
      bad[j] |= !(v < kInf);  // NaN or +inf
      fin[j] += v > -kInf;
    }
  }
  for (; i < n; ++i) {
    mx[0] = std::max(mx[0], p[i]);
    bad[0] |= !(p[i] < kInf);
    fin[0] += p[i] > -kInf;
  }
  Scan s;
  bool bad_any = false;
  for (size_t j = 0; j < kLanes; ++j) {
    s.max = std::max(s.max, mx[j]);
    bad_any |= bad[j] != 0;
    s.finite += size_t(fin[j]);
  }
  if (bad_any) {
    for (size_t t = 0; t < n; ++t) {
      if (!(x[t] < kInf)) {
        fail("sampler: logit of token {} is {}; the model produced non-finite output", t, x[t]);
      }
    }
  }
  DSV3_CHECK(s.finite > 0,
             "sampler: all {} logits are -inf (or the vocabulary is empty); no token "
             "can be sampled",
             x.size());
  return s;
}

constexpr size_t kBlock = 32;

// max(x[lo, hi)), vectorizable (no early exit, no NaN by the time it is used).
inline float block_max(std::span<const float> x, size_t lo, size_t hi) {
  float m = -kInf;
  for (size_t i = lo; i < hi; ++i) m = std::max(m, x[i]);
  return m;
}

// Argmax with ties going to the lowest id; also rejects NaN/+inf.
int32_t argmax(std::span<const float> x) {
  const Scan s = scan(x);
  for (size_t i = 0; i < x.size(); ++i) {
    if (x[i] == s.max) return int32_t(i);
  }
  DSV3_ASSERT(false);
  return -1;
}

// "a ranks before b": larger logit, then lower id.
bool ranks_before(const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
}

// Visits (id, logit) of the distribution's support: every finite logit, or just `ids`.
template <class F>
void for_each_token(std::span<const float> x, const std::vector<int32_t>* ids, F&& f) {
  if (ids) {
    for (int32_t i : *ids) f(i, x[size_t(i)]);
  } else {
    for (size_t i = 0; i < x.size(); ++i) {
      if (x[i] > -kInf) f(int32_t(i), x[i]);
    }
  }
}

// log(sum(exp(x))) over the support, in float64; `scratch` holds the weights.
double log_sum_exp(std::span<const float> x, const std::vector<int32_t>* ids,
                   std::vector<float>& scratch) {
  float mx = -kInf;
  if (ids) {
    for (int32_t i : *ids) mx = std::max(mx, x[size_t(i)]);
  } else {
    mx = scan(x).max;
  }
  double z = 0;
  if (ids) {
    for (int32_t i : *ids) z += exp_nonpos(x[size_t(i)] - mx);
  } else {
    z = exp_weights(x, mx, scratch);
  }
  return double(mx) + std::log(z);
}

// The n best-ranked tokens of the support, best first, with logprob = logit - lse.
std::vector<TokenLogprob> top_n(std::span<const float> x, const std::vector<int32_t>* ids, size_t n,
                                double lse) {
  std::vector<std::pair<float, int32_t>> heap;  // worst-ranked at front
  if (n == 0) return {};
  heap.reserve(n + 1);
  for_each_token(x, ids, [&](int32_t i, float v) {
    if (heap.size() == n && v < heap.front().first) return;  // the common case, decided fast
    const std::pair<float, int32_t> p{v, i};
    if (heap.size() < n) {
      heap.push_back(p);
      std::push_heap(heap.begin(), heap.end(), ranks_before);
    } else if (ranks_before(p, heap.front())) {
      std::pop_heap(heap.begin(), heap.end(), ranks_before);
      heap.back() = p;
      std::push_heap(heap.begin(), heap.end(), ranks_before);
    }
  });
  std::sort(heap.begin(), heap.end(), ranks_before);
  std::vector<TokenLogprob> out;
  out.reserve(heap.size());
  for (const auto& [v, i] : heap) out.push_back({i, float(double(v) - lse)});
  return out;
}

}  // namespace

// ----------------------------------------------------------------------------------------------

void SamplingParams::validate() const {
  DSV3_CHECK(std::isfinite(temperature) && temperature >= 0.0f,
             "sampling: temperature {} must be >= 0 (0 = greedy)", temperature);
  DSV3_CHECK(temperature == 0.0f || temperature >= 1e-5f,
             "sampling: temperature {} is too small to compute with; use 0 for greedy decoding",
             temperature);
  DSV3_CHECK(top_k >= 0, "sampling: top_k {} must be >= 0 (0 = off)", top_k);
  DSV3_CHECK(top_p > 0.0f && top_p <= 1.0f,
             "sampling: top_p {} must be in (0, 1] (1 = off; 0 would keep no token)", top_p);
  DSV3_CHECK(min_p >= 0.0f && min_p < 1.0f, "sampling: min_p {} must be in [0, 1) (0 = off)",
             min_p);
  DSV3_CHECK(std::isfinite(repetition_penalty) && repetition_penalty > 0.0f,
             "sampling: repetition_penalty {} must be > 0 (1 = off)", repetition_penalty);
  DSV3_CHECK(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f,
             "sampling: frequency_penalty {} must be in [-2, 2] (0 = off)", frequency_penalty);
  DSV3_CHECK(presence_penalty >= -2.0f && presence_penalty <= 2.0f,
             "sampling: presence_penalty {} must be in [-2, 2] (0 = off)", presence_penalty);
  DSV3_CHECK(max_new_tokens >= 0, "sampling: max_new_tokens {} must be >= 0", max_new_tokens);
  DSV3_CHECK(!logprobs || *logprobs >= 0,
             "sampling: logprobs {} must be >= 0 (the number of top tokens to report)",
             logprobs.value_or(0));
  for (int32_t id : stop_token_ids) {
    DSV3_CHECK(id >= 0, "sampling: stop token id {} must be >= 0", id);
  }
  for (const std::string& s : stop_strings) {
    DSV3_CHECK(!s.empty(),
               "sampling: a stop string is empty; it would end every generation "
               "before its first token");
  }
}

bool SamplingParams::is_stop_token(int32_t id) const {
  return std::find(stop_token_ids.begin(), stop_token_ids.end(), id) != stop_token_ids.end();
}

// ----------------------------------------------------------------------------------------------

Rng::Rng(uint64_t seed, uint64_t stream) {
  uint64_t st = stream;
  uint64_t x = seed ^ splitmix64(st);
  for (uint64_t& s : s_) s = splitmix64(x);
}

uint64_t Rng::next() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

double Rng::uniform() {
  return double(next() >> 11) * 0x1.0p-53;
}

// ----------------------------------------------------------------------------------------------

Sampler::Sampler(SamplingParams params, std::span<const int32_t> prompt, uint64_t stream)
    : params_((params.validate(), std::move(params))),
      rng_(params_.seed ? *params_.seed : fresh_seed(), stream) {
  for (int32_t t : prompt) {
    DSV3_CHECK(t >= 0, "sampler: prompt token id {} is negative", t);
    seen_.insert(t);
  }
}

void Sampler::accept(int32_t token) {
  DSV3_CHECK(token >= 0, "sampler: accepted token id {} is negative", token);
  seen_.insert(token);
  ++generated_[token];
  ++num_generated_;
}

bool Sampler::device_drawable() const {
  return params_.repetition_penalty == 1.0f && params_.frequency_penalty == 0.0f &&
         params_.presence_penalty == 0.0f && !params_.logprobs;
}

void Sampler::apply_penalties(std::span<float> x) const {
  const auto check = [&](int32_t t) {
    DSV3_CHECK(size_t(t) < x.size(),
               "sampler: token id {} in the history is outside the {} logits given; the "
               "logits must cover the whole vocabulary",
               t, x.size());
  };
  const float rep = params_.repetition_penalty;
  if (rep != 1.0f) {
    for (int32_t t : seen_) {
      check(t);
      float& l = x[size_t(t)];
      l = l < 0.0f ? l * rep : l / rep;
    }
  }
  const double freq = params_.frequency_penalty, pres = params_.presence_penalty;
  if (freq != 0.0 || pres != 0.0) {
    for (const auto& [t, count] : generated_) {
      check(t);
      float& l = x[size_t(t)];
      l = float(double(l) - (freq * count + pres));
    }
  }
}

void Sampler::select(std::span<float> x) {
  const Scan s = scan(x);
  float mx = s.max;
  const float temp = params_.temperature;
  if (temp != 1.0f) {
    for (float& v : x) v /= temp;
    mx /= temp;  // division by a positive number is monotone, so the max stays the max
    DSV3_CHECK(mx < kInf,
               "sampler: the largest logit overflows float at temperature {}; the "
               "model produced extreme logits",
               temp);
  }
  const size_t vocab = x.size();
  bool all = true;
  kept_.clear();

  // Top-k: the k-th largest value is the threshold; equal values are all kept.
  const size_t k = size_t(params_.top_k);
  if (k > 0 && k < s.finite) {
    float kth;
    if (k * 16 <= vocab) {  // min-heap of the k largest: one pass, few heap updates
      heap_.assign(x.begin(), x.begin() + std::ptrdiff_t(k));
      std::make_heap(heap_.begin(), heap_.end(), std::greater<float>());
      // Blocks whose max cannot enter the heap (almost all of them) are skipped whole.
      for (size_t lo = k; lo < vocab; lo += kBlock) {
        const size_t hi = std::min(vocab, lo + kBlock);
        if (block_max(x, lo, hi) <= heap_.front()) continue;
        for (size_t i = lo; i < hi; ++i) {
          if (x[i] > heap_.front()) {
            std::pop_heap(heap_.begin(), heap_.end(), std::greater<float>());
            heap_.back() = x[i];
            std::push_heap(heap_.begin(), heap_.end(), std::greater<float>());
          }
        }
      }
      kth = heap_.front();
    } else {
      heap_.assign(x.begin(), x.end());
      std::nth_element(heap_.begin(), heap_.begin() + std::ptrdiff_t(k - 1), heap_.end(),
                       std::greater<float>());
      kth = heap_[k - 1];
    }
    for (size_t lo = 0; lo < vocab; lo += kBlock) {
      const size_t hi = std::min(vocab, lo + kBlock);
      if (block_max(x, lo, hi) < kth) continue;
      for (size_t i = lo; i < hi; ++i) {
        if (x[i] >= kth) kept_.push_back(int32_t(i));
      }
    }
    all = false;
  }

  // Top-p: walk tokens from most to least likely; a token stays while the mass before it is
  // < p. Over the whole vocabulary a full sort is avoided: a histogram of the mass by logit
  // (buckets 1/32 logit wide below the max, the last one open-ended) finds the bucket where
  // the cumulative mass reaches p; tokens in higher buckets are all kept, lower ones all
  // removed (set to -inf right away, so the result stays "all finite logits are kept"), and
  // only the boundary bucket is sorted.
  if (params_.top_p < 1.0f) {
    const double p = params_.top_p;
    double cum = 0, target = 0;
    pairs_.clear();
    if (all) {
      constexpr uint32_t kBuckets = 1024;
      constexpr float kPerLogit = 32.0f, kRound = 12582912.0f;  // see exp_nonpos
      target = p * exp_weights(x, mx, weights_);
      buckets_.resize(vocab);
      for (size_t i = 0; i < vocab; ++i) {  // round(min(...)): monotone in the logit
        const float t = std::min((mx - x[i]) * kPerLogit, float(kBuckets - 1)) + kRound;
        buckets_[i] = std::bit_cast<uint32_t>(t) - std::bit_cast<uint32_t>(kRound);
      }
      std::array<double, kBuckets> mass{};
      for (size_t i = 0; i < vocab; ++i) mass[buckets_[i]] += weights_[i];  // -inf weighs 0
      uint32_t b = 0;
      while (b < kBuckets - 1 && cum + mass[b] < target) cum += mass[b++];
      for (size_t i = 0; i < vocab; ++i) {
        if (buckets_[i] == b && x[i] > -kInf) pairs_.emplace_back(x[i], int32_t(i));
      }
      for (size_t i = 0; i < vocab; ++i) x[i] = buckets_[i] > b ? -kInf : x[i];
    } else {
      double z = 0;
      for (int32_t i : kept_) {
        pairs_.emplace_back(x[size_t(i)], i);
        z += exp_nonpos(x[size_t(i)] - mx);
      }
      target = p * z;
      kept_.clear();
    }
    std::sort(pairs_.begin(), pairs_.end(), ranks_before);
    size_t n = 0;
    for (; n < pairs_.size() && cum < target; ++n) {  // the first always stays: cum < target
      cum += exp_nonpos(pairs_[n].first - mx);
    }
    if (all) {
      for (size_t j = n; j < pairs_.size(); ++j) x[size_t(pairs_[j].second)] = -kInf;
    } else {
      for (size_t j = 0; j < n; ++j) kept_.push_back(pairs_[j].second);
      std::sort(kept_.begin(), kept_.end());
    }
  }

  // Min-p: p_i >= min_p * p_max, i.e. exp(logit_i - max) >= min_p.
  if (params_.min_p > 0.0f) {
    const double min_p = params_.min_p, log_min_p = std::log(min_p);
    const auto keep = [&](float v) {
      const double d = double(v) - double(mx);
      return d >= log_min_p - 1e-9 && std::exp(d) >= min_p;  // cheap test first
    };
    if (all) {
      for (size_t i = 0; i < vocab; ++i) {
        if (x[i] > -kInf && keep(x[i])) kept_.push_back(int32_t(i));
      }
    } else {
      std::erase_if(kept_, [&](int32_t i) { return !keep(x[size_t(i)]); });
    }
    all = false;
  }
  // A large kept set is cheaper as a mask: the whole-vocabulary loops vectorize, id lists don't.
  if (!all && kept_.size() * 8 > vocab) {
    mask_removed(x);
    all = true;
  }
  all_kept_ = all;
  kept_max_ = mx;
}

int32_t Sampler::draw(std::span<const float> x) {
  // Inverse CDF over the kept tokens in ascending id order, weights exp(logit - max) summed in
  // float64. Over the whole vocabulary the CDF is walked in blocks of 256 first, so the long
  // chain of dependent additions is 256 times shorter.
  const double u = rng_.uniform();
  const float mx = kept_max_;
  int32_t last = -1;
  double cum = 0;
  if (all_kept_) {
    constexpr size_t kCdfBlock = 256;
    const size_t n = x.size(), nblocks = (n + kCdfBlock - 1) / kCdfBlock;
    exp_weights(x, mx, weights_);
    block_sums_.assign(nblocks, 0.0);
    for (size_t b = 0; b < nblocks; ++b) {
      double acc[8] = {};
      const size_t lo = b * kCdfBlock, hi = std::min(n, lo + kCdfBlock);
      size_t i = lo;
      for (; i + 8 <= hi; i += 8) {
        for (int j = 0; j < 8; ++j) acc[j] += weights_[i + size_t(j)];
      }
      for (; i < hi; ++i) acc[0] += weights_[i];
      block_sums_[b] =
          ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    }
    double total = 0;
    for (double bs : block_sums_) total += bs;
    const double target = u * total;
    size_t b = 0;
    while (b + 1 < nblocks && cum + block_sums_[b] <= target) cum += block_sums_[b++];
    for (size_t i = b * kCdfBlock; i < n; ++i) {
      if (weights_[i] > 0.0f) {
        cum += weights_[i];
        last = int32_t(i);
        if (cum > target) return last;
      }
    }
  } else {
    double total = 0;
    for (int32_t i : kept_) total += exp_nonpos(x[size_t(i)] - mx);
    const double target = u * total;
    for (int32_t i : kept_) {
      const float w = exp_nonpos(x[size_t(i)] - mx);
      if (w > 0.0f) {
        cum += w;
        last = i;
        if (cum > target) return last;
      }
    }
  }
  DSV3_ASSERT(last >= 0);
  return last;  // float64 rounding put the target at the very end
}

void Sampler::mask_removed(std::span<float> logits) const {
  size_t j = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (j < kept_.size() && size_t(kept_[j]) == i) {
      ++j;
    } else {
      logits[i] = -kInf;
    }
  }
}

void Sampler::process(std::span<float> logits) {
  apply_penalties(logits);
  if (params_.greedy()) return;
  select(logits);
  if (!all_kept_) mask_removed(logits);
}

int32_t Sampler::sample(std::span<float> logits) {
  apply_penalties(logits);
  int32_t token;
  if (params_.greedy()) {
    token = argmax(logits);
  } else {
    select(logits);
    token = draw(logits);
  }
  accept(token);
  return token;
}

SampleResult Sampler::sample_with_logprobs(std::span<float> logits) {
  const bool raw = params_.logprobs_mode == LogprobsMode::kRaw;
  if (raw) raw_.assign(logits.begin(), logits.end());
  SampleResult r;
  apply_penalties(logits);
  if (params_.greedy()) {
    r.token = argmax(logits);
  } else {
    select(logits);
    r.token = draw(logits);
  }
  accept(r.token);

  // The distribution the logprobs describe: raw logits, penalized logits (greedy), or the
  // kept set of the processed logits.
  std::span<const float> dist = raw ? std::span<const float>(raw_) : logits;
  const std::vector<int32_t>* ids = (raw || params_.greedy() || all_kept_) ? nullptr : &kept_;
  const double lse = log_sum_exp(dist, ids, weights_);
  r.logprob = float(double(dist[size_t(r.token)]) - lse);
  r.top = top_n(dist, ids, size_t(params_.logprobs.value_or(0)), lse);
  return r;
}

// ----------------------------------------------------------------------------------------------

StopChecker::StopChecker(std::vector<std::string> stop_strings) : stops_(std::move(stop_strings)) {
  for (const std::string& s : stops_) {
    DSV3_CHECK(!s.empty(),
               "stop strings: an empty stop string would end every generation "
               "before its first token");
    max_len_ = std::max(max_len_, s.size());
  }
}

std::optional<size_t> StopChecker::find(std::string_view text) {
  if (stops_.empty()) return std::nullopt;
  if (text.size() < scanned_) scanned_ = 0;  // not an extension of the last text: rescan all
  // A match that starts before `from` would have ended inside the text searched last time.
  const size_t from = scanned_ >= max_len_ ? scanned_ - (max_len_ - 1) : 0;
  size_t best = std::string_view::npos;
  for (const std::string& s : stops_) best = std::min(best, text.find(s, from));
  scanned_ = text.size();
  if (best == std::string_view::npos) return std::nullopt;
  return best;
}

size_t StopChecker::holdback(std::string_view text) const {
  size_t best = 0;
  for (const std::string& s : stops_) {
    for (size_t k = std::min(s.size() - 1, text.size()); k > best; --k) {
      if (text.substr(text.size() - k) == std::string_view(s).substr(0, k)) {
        best = k;
        break;
      }
    }
  }
  return best;
}

}  // namespace dsv3::infer
