// dsv3 info: what a checkpoint is and what it costs to run.
#include <fmt/format.h>

#include <map>

#include "commands.h"
#include "io/safetensors.h"
#include "model/layout.h"
#include "model/weights.h"
#ifdef DSV3_HAVE_CUDA
#include "kernels/cuda/engine.h"
#endif

namespace dsv3::apps {

namespace {

std::string human(double n) {
  const char* unit[] = {"", "K", "M", "B", "T"};
  int u = 0;
  while (n >= 1000 && u < 4) n /= 1000, ++u;
  return fmt::format("{:.2f}{}", n, unit[u]);
}

std::string bytes(double b) {
  const char* unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  return fmt::format("{:.1f} {}", b, unit[u]);
}

void print_info(const std::string& dir) {
  // Loading the weights validates the checkpoint against its config.
  const ModelWeights w = ModelWeights::load(dir);
  const ModelConfig& c = w.config;
  fmt::print("model            {} ({})\n", dir, c.model_type);
  fmt::print("layers           {} ({} dense, {} MoE) + {} MTP\n", c.num_hidden_layers,
             std::min(c.first_k_dense_replace, c.num_hidden_layers),
             c.num_hidden_layers - std::min(c.first_k_dense_replace, c.num_hidden_layers),
             c.num_nextn_predict_layers);
  fmt::print("hidden           {}, vocab {}, context {}\n", c.hidden_size, c.vocab_size,
             c.max_position_embeddings);
  fmt::print("attention (MLA)  {} heads, q_lora {}, kv_lora {}, qk {}+{} (rope), v {}\n",
             c.num_attention_heads, c.has_q_lora() ? std::to_string(c.q_lora_rank) : "none",
             c.kv_lora_rank, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim);
  if (c.rope.is_yarn())
    fmt::print("rope             theta {}, YaRN factor {} over {} tokens\n", c.rope_theta,
               c.rope.factor, c.rope.original_max_position_embeddings);
  else
    fmt::print("rope             theta {}\n", c.rope_theta);
  if (c.n_routed_experts > 0)
    fmt::print("experts          {} routed (top {}, {} groups keep {}), {} shared, {} / {}\n",
               c.n_routed_experts, c.num_experts_per_tok, c.n_group, c.topk_group,
               c.n_shared_experts, c.scoring_func, c.topk_method);
  const ParamCounts p = count_params(c);
  fmt::print("parameters       {} total, {} activated per token, {} in MTP\n",
             human(double(p.total)), human(double(p.activated)), human(double(p.mtp)));

  std::map<std::string, std::pair<int64_t, size_t>> by_dtype;
  for (const std::string& name : w.store.names()) {
    const Tensor t = w.store.get(name);
    auto& e = by_dtype[std::string(dtype_name(t.dtype()))];
    e.first += 1;
    e.second += t.nbytes();
  }
  size_t total = 0;
  for (const auto& [dt, e] : by_dtype) {
    fmt::print("weights {:<8} {} tensors, {}\n", dt, e.first, bytes(double(e.second)));
    total += e.second;
  }
  fmt::print("weights total    {}\n", bytes(double(total)));
  // MODEL_SPEC §3: the latent cache keeps c_kv and the rotary key per token and layer.
  const int64_t layers = c.num_hidden_layers;
  const double latent = double((c.kv_lora_rank + c.qk_rope_head_dim) * layers * 2);
  const double full = double(c.num_attention_heads * (c.qk_head_dim() + c.v_head_dim) * layers * 2);
  fmt::print("KV cache / token {} latent (BF16) vs {} for full per-head K/V ({:.1f}x smaller)\n",
             bytes(latent), bytes(full), full / latent);
#ifdef DSV3_HAVE_CUDA
  // What the CUDA engine allocates (its one device allocation) for one 4K-token sequence.
  cuda::CudaEngineOptions opt;
  opt.max_sequences = 1;
  opt.max_context = 4096;
  const cuda::MemoryPlan plan = cuda::plan_memory(w, opt);
  fmt::print(
      "GPU (CUDA)       {} = weights {} + latent cache of 4096 tokens {} (BF16) + "
      "activations of {} tokens {}\n",
      bytes(double(plan.total())), bytes(double(plan.weights)), bytes(double(plan.caches)),
      opt.max_step_tokens, bytes(double(plan.workspace)));
  fmt::print("GPU cache/token  {} BF16", bytes(double(plan.cache_bytes_per_token)));
  if (c.kv_lora_rank % 128 == 0) {  // what an FP8 cache needs (CudaEngineOptions::fp8_cache)
    opt.fp8_cache = true;
    fmt::print(", {} with --kv-cache-dtype fp8",
               bytes(double(cuda::plan_memory(w, opt).cache_bytes_per_token)));
  }
  fmt::print("\n");
#endif
}

}  // namespace

void add_info(CLI::App& app) {
  auto* cmd = app.add_subcommand("info",
                                 "Summarise a checkpoint: config, parameters, memory, "
                                 "KV-cache bytes per token");
  auto dir = std::make_shared<std::string>();
  cmd->add_option("--model", *dir, "checkpoint directory (config.json + safetensors)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->callback([dir] { print_info(*dir); });
}

}  // namespace dsv3::apps
