// dsv3 forward: logits of a full forward pass, safetensors in and out.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "commands.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "model/model.h"
#ifdef DSV3_HAVE_CUDA
#include "kernels/cuda/engine.h"
#endif

namespace dsv3::apps {

namespace {

Tensor ids_from_list(const std::vector<int64_t>& list) {
  Tensor ids = Tensor::zeros(DType::I32, {1, int64_t(list.size())});
  for (size_t i = 0; i < list.size(); ++i) {
    DSV3_CHECK(list[i] >= 0 && list[i] <= INT32_MAX, "--ids: {} is not a valid token id", list[i]);
    ids.ptr<int32_t>()[i] = int32_t(list[i]);
  }
  return ids;
}

Tensor ids_from_file(const std::string& input) {
  const auto in = SafetensorsFile::open(input);
  DSV3_CHECK(in->has("input_ids"), "{} has no tensor input_ids (expected I32 [B, T])", input);
  Tensor ids = in->get("input_ids");
  DSV3_CHECK(ids.ndim() == 2, "input_ids in {} must be [B, T], got {}", input,
             shape_str(ids.shape()));
  if (ids.dtype() == DType::I64) {  // accept torch's default integer type too
    Tensor t = Tensor::zeros(DType::I32, ids.shape());
    for (int64_t i = 0; i < ids.numel(); ++i) {
      const int64_t v = ids.ptr<int64_t>()[i];
      DSV3_CHECK(v >= 0 && v <= INT32_MAX, "input_ids[{}] = {} is not a valid token id", i, v);
      t.ptr<int32_t>()[i] = int32_t(v);
    }
    ids = t;
  }
  DSV3_CHECK(ids.dtype() == DType::I32, "input_ids in {} must be I32 or I64, got {}", input,
             dtype_name(ids.dtype()));
  return ids;
}

// The most likely next tokens after the last position of the first sequence.
void print_top(const Tensor& logits, int top) {
  const int64_t t = logits.dim(1), v = logits.dim(2);
  const float* row = logits.ptr<float>() + (t - 1) * v;
  std::vector<int64_t> idx(static_cast<size_t>(v));
  for (int64_t i = 0; i < v; ++i) idx[size_t(i)] = i;
  top = int(std::min<int64_t>(top, v));
  std::partial_sort(idx.begin(), idx.begin() + top, idx.end(),
                    [&](int64_t a, int64_t b) { return row[a] > row[b]; });
  fmt::print("next-token logits at position {}:", t - 1);
  for (int i = 0; i < top; ++i) fmt::print(" {}:{:.3f}", idx[size_t(i)], row[idx[size_t(i)]]);
  fmt::print("\n");
}

#ifdef DSV3_HAVE_CUDA
// The same outputs from the CUDA engine: each sequence prefilled with all its logits; MTP
// logits one position at a time (row i predicts token i + 2).
void forward_cuda(const Model& model, const Tensor& ids, int device, bool want_mtp, Tensor& logits,
                  Tensor& mtp_logits) {
  const int64_t b = ids.dim(0), t = ids.dim(1), v = model.config().vocab_size;
  cuda::CudaEngineOptions opt;
  opt.device = device;
  opt.max_sequences = 1;
  opt.max_context = t;
  opt.max_step_tokens = std::min<int64_t>(t, 512);
  const cuda::CudaEngine engine(model, opt);
  logits = Tensor::zeros(DType::F32, {b, t, v});
  if (want_mtp) mtp_logits = Tensor::zeros(DType::F32, {b, t - 1, v});
  for (int64_t r = 0; r < b; ++r) {
    const int32_t* row = ids.ptr<int32_t>() + r * t;
    LatentCache cache = engine.new_cache(t);
    Tensor hidden;
    const Tensor l = engine.step({{&cache, {row, row + t}, true}}, want_mtp ? &hidden : nullptr);
    std::copy(l.ptr<float>(), l.ptr<float>() + t * v, logits.ptr<float>() + r * t * v);
    if (!want_mtp) continue;
    LatentCache mc = engine.new_mtp_cache(t);
    for (int64_t i = 0; i + 1 < t; ++i) {
      const Tensor ml = engine.mtp_step({{&mc, {row[i + 1]}, hidden.slice_rows(i, i + 1)}});
      std::copy(ml.ptr<float>(), ml.ptr<float>() + v,
                mtp_logits.ptr<float>() + (r * (t - 1) + i) * v);
    }
  }
}
#endif

void run_forward(const std::string& model_dir, const Tensor& ids, const std::string& output,
                 const std::string& device) {
  const int cuda_index = cuda_index_of(device);
  const auto t0 = std::chrono::steady_clock::now();
  const Model model(ModelWeights::load(model_dir));
  const auto t1 = std::chrono::steady_clock::now();
  const bool want_mtp = !output.empty() && !model.weights().mtp.empty() && ids.dim(1) > 1;
  Tensor logits, mtp_logits;
  if (cuda_index < 0) {
    Tensor hidden;
    logits = model.forward(ids, &hidden);
    if (want_mtp) mtp_logits = model.forward_mtp(ids, hidden, 1);
  } else {
#ifdef DSV3_HAVE_CUDA
    forward_cuda(model, ids, cuda_index, want_mtp, logits, mtp_logits);
#endif
  }
  if (!output.empty()) {
    SafetensorsWriter out;
    out.add("logits", logits);
    if (want_mtp) out.add("mtp_logits", mtp_logits);
    out.write(output);
  } else {
    print_top(logits, 5);
  }
  const auto t2 = std::chrono::steady_clock::now();
  const double load_s = std::chrono::duration<double>(t1 - t0).count();
  const double fwd_s = std::chrono::duration<double>(t2 - t1).count();
  fmt::print(stderr, "forward: {} tokens in {:.3f} s (load {:.3f} s){}{}\n", ids.numel(), fwd_s,
             load_s, output.empty() ? "" : " -> ", output);
}

}  // namespace

void add_forward(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "forward",
      "Run the full forward pass: input_ids (I32 [B, T]) in, logits (F32 [B, T, V]) "
      "out; MTP models also write mtp_logits (F32 [B, T-1, V])");
  struct Args {
    std::string model, input, output, device = "cpu";
    std::vector<int64_t> ids;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--model", a->model, "checkpoint directory")
      ->required()
      ->check(CLI::ExistingDirectory);
  auto* in = cmd->add_option("--input", a->input, "safetensors file with input_ids (I32 [B, T])")
                 ->check(CLI::ExistingFile);
  auto* ids = cmd->add_option("--ids", a->ids, "token ids of one sequence, e.g. --ids 0,17,42")
                  ->delimiter(',');
  in->excludes(ids);
  cmd->add_option("--output", a->output,
                  "safetensors file to write (without it: print the top next tokens)");
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N")->capture_default_str();
  cmd->callback([a, in, ids] {
    DSV3_CHECK(in->count() + ids->count() > 0, "forward needs --input FILE or --ids LIST");
    run_forward(a->model, a->ids.empty() ? ids_from_file(a->input) : ids_from_list(a->ids),
                a->output, a->device);
  });
}

}  // namespace dsv3::apps
