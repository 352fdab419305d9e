// dsv3 forward: logits of a full forward pass, safetensors in and out.
#include <fmt/format.h>

#include <chrono>

#include "commands.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "model/model.h"

namespace dsv3::apps {

namespace {

void run_forward(const std::string& model_dir, const std::string& input,
                 const std::string& output) {
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

  const auto t0 = std::chrono::steady_clock::now();
  const Model model(ModelWeights::load(model_dir));
  const auto t1 = std::chrono::steady_clock::now();
  Tensor hidden;
  const Tensor logits = model.forward(ids, &hidden);
  SafetensorsWriter out;
  out.add("logits", logits);
  if (!model.weights().mtp.empty() && ids.dim(1) > 1)
    out.add("mtp_logits", model.forward_mtp(ids, hidden, 1));
  out.write(output);
  const auto t2 = std::chrono::steady_clock::now();
  const double load_s = std::chrono::duration<double>(t1 - t0).count();
  const double fwd_s = std::chrono::duration<double>(t2 - t1).count();
  fmt::print(stderr, "forward: {} tokens in {:.3f} s (load {:.3f} s) -> {}\n", ids.numel(), fwd_s,
             load_s, output);
}

}  // namespace

void add_forward(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "forward",
      "Run the full forward pass: input_ids (I32 [B, T]) in, logits (F32 [B, T, V]) "
      "out; MTP models also write mtp_logits (F32 [B, T-1, V])");
  struct Args {
    std::string model, input, output;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--model", a->model, "checkpoint directory")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--input", a->input, "safetensors file with input_ids")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--output", a->output, "safetensors file to write")->required();
  cmd->callback([a] { run_forward(a->model, a->input, a->output); });
}

}  // namespace dsv3::apps
