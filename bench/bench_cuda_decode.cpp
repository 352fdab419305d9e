// Decode speed of the CUDA engine against the GPU's memory bandwidth, both measured in this run.
// At batch 1 a token must read every weight it uses once, so
//   achieved bandwidth = (bytes of the weights one token touches) × tokens/s,
// compared with a device-to-device cudaMemcpy of 1 GiB (bytes read + written) timed here.
// Each step includes what a caller gets: greedy tokens drawn on the GPU (step_sample, as
// generate and serve run it; batches over 1 also with the logits copied back and the argmax on
// the host, the path before GPU sampling). Batch 1 runs twice, eager and from CUDA graphs, and the
// two greedy runs must pick the same tokens. Then prefill of one long prompt per length in
// --prefill, on an engine sized for it, with FP8 weights' GEMMs on the FP8 tensor cores
// (block-scaled cuBLASLt) and, in the same run, on BF16 copies (the path before it), with the
// attention in the absorbed form on the decode kernel instead of the non-absorbed flash kernel, and
// with every routed expert in one grouped launch per projection (grouped_experts, forced on at
// every size); batches over --gemv-max-rows are also timed with the experts on the gemv
// kernel and with BF16 GEMMs. Eager decode steps and the default
// prefill's GPU time are also split by stage (CudaEngineOptions::time_stages). Usage:
// bench_cuda_decode --model DIR [--steps 32] [--batch 1,8,64,256 | none] [--prompt 64]
//        [--prefill 1024,8192] [--gemv-max-rows N (default: the engine's)]
//        [--kv-cache-dtype bf16 | fp8 (the latent cache's format, default bf16)]
//        [--pdl 1 | 0 (kernels launched early, programmatic dependent launch; default 1)]
//        [--gemv-flags FLAGS (kernels.h gemv_flags)] [--gemv-block-warps 1..8]
//        [--gemv-tile 1 | 0 (batches of 2-16 on the tile kernel or the general one)]
//        [--gemv-tc 1 | 0 (batches of 2-16 on the gemv's tensor-core kernel or the F32 ones,
//         CudaEngineOptions::gemv_tensor_cores; default 1)]
//        [--grouped-tile-rows 16 | 32 | 64 (the grouped experts kernel's rows a block;
//         default 0: by the rows an expert)]
//        [--grouped-experts 1 | 0] [--grouped-min-rows N] [--bf16-grouped-min-rows N]
//         (CudaEngineOptions: decode batches' FP8 / BF16 routed experts on the grouped kernel
//         from N rows an expert)]
//        [--gemv-tile-pass 4 | 8 (input rows the tile kernel takes a pass)]
//        [--gemv-rows-batch 1 | 2 | 4 (the one-row kernel's FP8 chunks a batch)]
//        [--absorb-tc 0 | 1 (batches over gemv_max_rows absorb W_UK and W_UV on the tensor
//         cores; default 1)] [--attention-tc 1 | 0 (the absorbed attention on the tensor cores)]
//        [--side-stream 1 | 0 (the cache write and shared experts on a second stream)]
//        [--fused-route 1 | 0 (a decode step's routing and permutation in one launch)]
//        [--combine-in-norm 1 | 0 (the routed experts' sum done by the next norm)]
//        [--expert-gemm-rows N (FP8 routed experts on one cuBLASLt GEMM each from N rows an
//         expert, below it on the grouped kernel)]
//        [--bf16-expert-gemm-rows N (BF16 routed experts on GEMMs from N rows an expert)]
//        [--bf16-wgmma-min-rows N, --fp8-wgmma-min-rows N (on Hopper, BF16 / FP8 routed experts
//         on the grouped kernel's 128-row wgmma tiles from N rows an expert)]
//        [--sample-split 0 | 1 (the sampler's first sweep in several blocks a row)]
//        [--mla-split-blocks N (the blocks the attention's key splits aim at; default 0: one
//         wave of the GPU)]
//        [--mla-tc-narrow 1 | 0 (up to 16 heads on a 16-head attention kernel)]
//        [--mla-wgmma 1 | 0 (the attention kernels on wgmma on Hopper, BF16 or FP8 cache)]
//        [--flash-kernel 2 | 1 | 0 (192 / 128 heads' prefill attention: wgmma over 128 or 64
//         keys a tile, or mma.sync)]
//        [--repeat PIECES (engine.h RepeatPiece bits: those kernels enqueued twice a layer, to
//         time them inside a graph by difference)]
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "cuda_bench.h"
#include "decode_bytes.h"
#include "infer/sampler.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/engine.h"
#include "kernels/cuda/kernels.h"

using namespace dsv3;
using bench::bytes_per_token;
using bench::parse_list;
using Clock = std::chrono::steady_clock;

namespace {

double secs(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Median of 10 device-to-device copies of 1 GiB: (read + written) bytes per second.

// Prompts of `len` tokens for `b` sequences, deterministic and spread over the vocabulary.
std::vector<StepEngine::Input> prompts(std::vector<LatentCache>& caches, int b, int len,
                                       int64_t vocab) {
  std::vector<StepEngine::Input> in;
  for (int i = 0; i < b; ++i) {
    std::vector<int32_t> ids(static_cast<size_t>(len));
    for (int j = 0; j < len; ++j)
      ids[size_t(j)] = int32_t((7919 * (int64_t(i) * len + j) + 13) % vocab);
    in.push_back({&caches[size_t(i)], ids, false});
  }
  return in;
}

struct DecodeRun {
  double prefill_tps = 0, tps = 0, ms = 0;
  std::vector<int32_t> tokens;  // greedy tokens of sequence 0, for the graph-vs-eager check
};

// Prefill of `prompt` tokens per sequence, 3 warm-up steps, then `steps` timed greedy steps:
// tokens drawn on the GPU by step_sample() (what generate and serve do), or with host_argmax
// from logits copied back by step() (the path before GPU sampling).
DecodeRun decode(const cuda::CudaEngine& engine, int b, int prompt, int steps,
                 bool host_argmax = false) {
  const int64_t v = engine.config().vocab_size;
  std::vector<LatentCache> caches;
  for (int i = 0; i < b; ++i) caches.push_back(engine.new_cache(prompt + steps + 8));
  std::vector<StepEngine::Input> in = prompts(caches, b, prompt, v);
  infer::SamplingParams greedy;
  greedy.temperature = 0;
  greedy.max_new_tokens = steps + 8;
  std::vector<infer::Sampler> samplers(static_cast<size_t>(b), infer::Sampler(greedy));
  std::vector<infer::Sampler*> ptrs;
  for (auto& sm : samplers) ptrs.push_back(&sm);
  DecodeRun r;
  std::vector<int32_t> tokens(static_cast<size_t>(b));
  const auto run_step = [&] {
    if (host_argmax) {
      const Tensor logits = engine.step(in);
      for (int i = 0; i < b; ++i) {
        const float* row = logits.ptr<float>() + int64_t(i) * v;
        tokens[size_t(i)] = int32_t(std::max_element(row, row + v) - row);
      }
    } else {
      const auto drawn = engine.step_sample(in, ptrs);
      for (int i = 0; i < b; ++i) tokens[size_t(i)] = drawn[size_t(i)].token;
    }
  };
  const auto t_pre = Clock::now();
  run_step();
  r.prefill_tps = double(b) * prompt / secs(t_pre, Clock::now());
  const auto next = [&] {
    for (int i = 0; i < b; ++i) in[size_t(i)].tokens = {tokens[size_t(i)]};
    r.tokens.push_back(in[0].tokens[0]);
    run_step();
  };
  for (int s = 0; s < 3; ++s) next();  // warm-up: cuBLASLt plans, graph capture
  engine.reset_stage_times();
  const auto t0 = Clock::now();
  for (int s = 0; s < steps; ++s) next();
  const double t = secs(t0, Clock::now());
  r.tps = double(b) * steps / t;
  r.ms = 1e3 * t / steps;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir, batches = "1,8,64,256", prefills = "1024,8192";
  int steps = 32, prompt = 64;
  int gemv_rows = int(cuda::CudaEngineOptions{}.gemv_max_rows);
  bool fp8_cache = false;
  bool absorb_tc = cuda::CudaEngineOptions{}.absorb_tensor_cores;
  bool attention_tc = cuda::CudaEngineOptions{}.attention_tensor_cores;
  bool gemv_tc = cuda::CudaEngineOptions{}.gemv_tensor_cores;
  unsigned repeat = 0;
  bool sample_split = cuda::CudaEngineOptions{}.sample_split_scan;
  bool side_stream = cuda::CudaEngineOptions{}.side_stream;
  bool combine_in_norm = cuda::CudaEngineOptions{}.combine_in_norm;
  int64_t bf16_expert_rows = cuda::CudaEngineOptions{}.bf16_expert_gemm_rows;
  int64_t expert_rows = cuda::CudaEngineOptions{}.expert_gemm_rows;
  bool grouped = cuda::CudaEngineOptions{}.grouped_experts;
  int64_t grouped_tile_rows = cuda::CudaEngineOptions{}.grouped_tile_rows;
  int64_t grouped_min_rows = cuda::CudaEngineOptions{}.grouped_min_rows;
  int64_t bf16_grouped_min_rows = cuda::CudaEngineOptions{}.bf16_grouped_min_rows;
  int64_t bf16_wgmma_min_rows = cuda::CudaEngineOptions{}.bf16_wgmma_min_rows;
  int64_t fp8_wgmma_min_rows = cuda::CudaEngineOptions{}.fp8_wgmma_min_rows;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--model")
      model_dir = v;
    else if (k == "--steps")
      steps = std::stoi(v);
    else if (k == "--batch")
      batches = v;
    else if (k == "--prompt")
      prompt = std::stoi(v);
    else if (k == "--prefill")
      prefills = v;
    else if (k == "--gemv-max-rows")
      gemv_rows = std::stoi(v);
    else if (k == "--kv-cache-dtype")
      fp8_cache = v == "fp8";
    else if (k == "--pdl")
      cuda::set_programmatic_launch(v != "0");
    else if (k == "--gemv-flags")
      cuda::gemv_flags(std::stoi(v));
    else if (k == "--gemv-block-warps")
      cuda::gemv_rows_block_warps(std::stoi(v));
    else if (k == "--grouped-tile-rows")
      grouped_tile_rows = std::stoll(v);
    else if (k == "--grouped-experts")
      grouped = v != "0";
    else if (k == "--grouped-min-rows")
      grouped_min_rows = std::stoll(v);
    else if (k == "--bf16-grouped-min-rows")
      bf16_grouped_min_rows = std::stoll(v);
    else if (k == "--bf16-wgmma-min-rows")
      bf16_wgmma_min_rows = std::stoll(v);
    else if (k == "--fp8-wgmma-min-rows")
      fp8_wgmma_min_rows = std::stoll(v);
    else if (k == "--absorb-tc")
      absorb_tc = v != "0";
    else if (k == "--attention-tc")
      attention_tc = v != "0";
    else if (k == "--side-stream")
      side_stream = v != "0";
    else if (k == "--sample-split")
      sample_split = v != "0";
    else if (k == "--repeat")
      repeat = unsigned(std::stoul(v));
    else if (k == "--gemv-rows-batch")
      cuda::gemv_rows_batch(std::stoi(v));
    else if (k == "--gemv-tile-pass")
      cuda::gemv_tile_pass_rows(std::stoi(v));
    else if (k == "--gemv-tile")
      cuda::gemv_allow_tile(v != "0");
    else if (k == "--gemv-tc")
      gemv_tc = v != "0";
    else if (k == "--expert-gemm-rows")
      expert_rows = std::stoll(v);
    else if (k == "--bf16-expert-gemm-rows")
      bf16_expert_rows = std::stoll(v);
    else if (k == "--combine-in-norm")
      combine_in_norm = v != "0";
    else if (k == "--fused-route")
      cuda::fused_route_permute(v != "0");
    else if (k == "--mla-split-blocks")
      cuda::set_mla_split_blocks(std::stoll(v));
    else if (k == "--mla-tc-narrow")
      cuda::set_mla_tc_narrow(v != "0");
    else if (k == "--mla-wgmma")
      cuda::set_mla_wgmma(v != "0");
    else if (k == "--flash-kernel")
      cuda::set_flash_kernel(std::stoi(v));
  }
  if (model_dir.empty()) {
    fmt::print(
        stderr,
        "usage: bench_cuda_decode --model DIR [--steps N] [--batch 1,8,64,256 | none] [--prompt N] "
        "[--prefill 1024,8192 | none] [--gemv-max-rows N] [--kv-cache-dtype bf16|fp8] "
        "[--pdl 1|0] [--gemv-flags FLAGS] [--gemv-block-warps 1..8] [--gemv-tile 1|0] [--gemv-tc "
        "1|0]\n"
        "       [--grouped-tile-rows 16|32|64|128] [--grouped-experts 1|0] [--grouped-min-rows N]\n"
        "       [--bf16-grouped-min-rows N] [--bf16-wgmma-min-rows N] [--fp8-wgmma-min-rows N]\n"
        "       [--gemv-tile-pass 4|8] [--absorb-tc 0|1]\n"
        "       [--gemv-rows-batch 1|2|4] [--attention-tc 1|0] [--repeat PIECES]\n"
        "       [--sample-split 0|1] [--side-stream 1|0] [--fused-route 1|0]\n"
        "       [--combine-in-norm 1|0] [--bf16-expert-gemm-rows N] [--expert-gemm-rows N]\n"
        "       [--mla-split-blocks N] [--mla-tc-narrow 1|0] [--mla-wgmma 1|0] [--flash-kernel "
        "2|1|0]\n");
    return 2;
  }
  int rc = 0;
  try {
    DSV3_CHECK(cuda::device_count() > 0, "no CUDA device");
    const std::vector<int> bs = batches == "none" ? std::vector<int>() : parse_list(batches);
    const std::vector<int> pls = prefills == "none" ? std::vector<int>() : parse_list(prefills);
    const auto t_load = Clock::now();
    const Model model(ModelWeights::load(model_dir));
    const ModelConfig& c = model.config();
    const double bw = bench::copy_bandwidth();
    const size_t per_tok = bytes_per_token(model.weights());
    fmt::print("device {}; latent cache {}\n", cuda::device_summary(0), fp8_cache ? "FP8" : "BF16");
    fmt::print("device-to-device copy {:.0f} GB/s (read + write)\n", bw / 1e9);
    fmt::print("weights read per token at batch 1: {:.1f} MB\n", double(per_tok) / 1e6);
    std::vector<std::string> table, stages;
    // The command line's engine options, for every engine of the run.
    const auto with_flags = [&](cuda::CudaEngineOptions opt) {
      opt.gemv_max_rows = gemv_rows;
      opt.fp8_cache = fp8_cache;
      opt.absorb_tensor_cores = absorb_tc;
      opt.attention_tensor_cores = attention_tc;
      opt.gemv_tensor_cores = gemv_tc;
      opt.repeat_pieces = repeat;
      opt.sample_split_scan = sample_split;
      opt.side_stream = side_stream;
      opt.combine_in_norm = combine_in_norm;
      opt.bf16_expert_gemm_rows = bf16_expert_rows;
      opt.expert_gemm_rows = expert_rows;
      opt.grouped_experts = grouped;
      opt.grouped_tile_rows = grouped_tile_rows;
      opt.grouped_min_rows = grouped_min_rows;
      opt.bf16_grouped_min_rows = bf16_grouped_min_rows;
      opt.bf16_wgmma_min_rows = bf16_wgmma_min_rows;
      opt.fp8_wgmma_min_rows = fp8_wgmma_min_rows;
      return opt;
    };
    // The decode engines: room for the largest batch of prompt + steps tokens.
    const auto decode_options = [&] {
      cuda::CudaEngineOptions opt;
      opt.max_sequences = *std::max_element(bs.begin(), bs.end());
      opt.max_context = prompt + steps + 8;
      opt.max_step_tokens = std::max<int64_t>(512, opt.max_sequences);
      return with_flags(opt);
    };
    if (!bs.empty()) {
      cuda::CudaEngineOptions opt = decode_options();
      opt.time_stages = true;  // records only chunks run eagerly (not graph replays)
      const cuda::CudaEngine engine(model, opt);
      fmt::print(
          "decode engine memory {:.2f} GiB (weights {:.2f}, caches {:.2f}, activations {:.2f}); "
          "load + upload {:.1f} s\n",
          double(engine.memory().total()) / (1u << 30),
          double(engine.memory().weights) / (1u << 30), double(engine.memory().caches) / (1u << 30),
          double(engine.memory().workspace) / (1u << 30), secs(t_load, Clock::now()));
      const auto row = [&](const std::string& what, const DecodeRun& r, bool bw_col) {
        const std::string gbs = bw_col
                                    ? fmt::format("{:.0f} ({:.0f}%)", double(per_tok) * r.tps / 1e9,
                                                  100.0 * double(per_tok) * r.tps / bw)
                                    : "-";
        table.push_back(fmt::format("{:>24} {:>10.1f} {:>10.3f} {:>14} {:>14.0f}", what, r.tps,
                                    r.ms, gbs, r.prefill_tps));
        fmt::print("{}\n", table.back());
      };
      // Where an eager step's GPU time goes (the last decode run's, per step).
      const auto stage_line = [&](int b) {
        std::string line = fmt::format("  decode b={} by stage, ms/step GPU (host):", b);
        for (const auto& st : engine.stage_times())
          if (st.gpu_ms > 0)
            line +=
                fmt::format(" {} {:.2f} ({:.2f});", st.name, st.gpu_ms / steps, st.host_ms / steps);
        stages.push_back(line);
        fmt::print("{}\n", line);
      };
      for (int b : bs) {
        if (b == 1) {
          // The same greedy run eager and from graphs: the tokens must agree exactly (the
          // logits are bit-identical; tests/cuda check that on the fixtures).
          engine.set_graphs(false);
          const DecodeRun eager = decode(engine, 1, prompt, steps);
          row("decode b=1 eager", eager, true);
          stage_line(1);
          engine.set_graphs(true);
          const DecodeRun graph = decode(engine, 1, prompt, steps);
          row("decode b=1 graph", graph, true);
          const bool same = graph.tokens == eager.tokens;
          fmt::print("check: graph replay tokens {} eager tokens ({} graphs captured)\n",
                     same ? "==" : "!=", engine.graphs_captured());
          if (!same) rc = 1;
          // What the gemv variants buy, eager (captured graphs keep the launch shapes they
          // were captured with): one output per warp, then also no split-K.
          engine.set_graphs(false);
          cuda::gemv_allow_rows_per_warp(false);
          row("b=1 eager,1 row/warp", decode(engine, 1, prompt, steps), true);
          cuda::gemv_split_k(1);
          row("b=1 eager,1 row,no split", decode(engine, 1, prompt, steps), true);
          cuda::gemv_split_k(0);
          cuda::gemv_allow_rows_per_warp(true);
          engine.set_graphs(true);
        } else {
          row(fmt::format("decode b={}", b), decode(engine, b, prompt, steps), false);
          if (b <= opt.graph_max_rows) {  // replays record no stages: the same batch eagerly
            engine.set_graphs(false);
            row(fmt::format("decode b={} eager", b), decode(engine, b, prompt, steps), false);
            engine.set_graphs(true);
          }
          stage_line(b);
          row(fmt::format("decode b={} host argmax", b), decode(engine, b, prompt, steps, true),
              false);
        }
      }
    }
    // Batches over gemv_max_rows run their FP8 linears as block-scaled GEMMs and the routed
    // experts on the grouped kernel (by default); the same batches with the experts on the gemv
    // kernel (BF16 ones up to expert_gemm_rows rows an expert), and on BF16 GEMMs over
    // dequantised weights with BF16 experts on one cuBLASLt GEMM each from
    // bf16_expert_gemm_rows rows (the paths before both), for the ratios.
    if (std::any_of(bs.begin(), bs.end(), [&](int b) { return b > gemv_rows; })) {
      for (const bool bf16 : {false, true}) {
        cuda::CudaEngineOptions opt = decode_options();
        opt.grouped_experts = false;
        if (!bf16) opt.bf16_expert_gemm_rows = opt.expert_gemm_rows;  // BF16 experts too
        opt.fp8_gemm = !bf16;
        const cuda::CudaEngine engine(model, opt);
        for (int b : bs) {
          if (b <= gemv_rows) continue;
          const DecodeRun r = decode(engine, b, prompt, steps);
          table.push_back(
              fmt::format("{:>24} {:>10.1f} {:>10.3f} {:>14} {:>14.0f}",
                          fmt::format("decode b={} {}", b, bf16 ? "bf16" : "gemv experts"), r.tps,
                          r.ms, "-", r.prefill_tps));
          fmt::print("{}\n", table.back());
        }
      }
    }
    // Prefill four ways: as an engine runs it by default; the FP8 weights' GEMMs on BF16
    // copies instead (bf16); the attention in the absorbed form on the decode kernel (tensor
    // cores) instead of the flash kernel (absorbed); the routed experts in one grouped launch
    // per projection at any size instead of one cuBLASLt GEMM each from the engine's
    // thresholds (grouped experts).
    for (const int way : {0, 1, 2, 3}) {
      const bool fp8 = way != 1;
      if (pls.empty()) break;
      // A fresh engine with room for one long sequence (the decode engine's caches are short).
      cuda::CudaEngineOptions opt;
      opt.max_sequences = 1;
      opt.max_context = *std::max_element(pls.begin(), pls.end()) + 8;
      opt.max_step_tokens = 2048;
      opt = with_flags(opt);
      opt.fp8_gemm = fp8;
      opt.flash_prefill = way != 2;
      if (way == 3) {  // every expert on it (by default, cuBLASLt from some size)
        opt.grouped_experts = true;
        opt.expert_gemm_rows = opt.bf16_grouped_max_rows = std::numeric_limits<int64_t>::max();
      }
      opt.time_stages = way == 0 || way == 3;
      const cuda::CudaEngine engine(model, opt);
      for (int len : pls) {
        for (int rep = 0; rep < 2; ++rep) {  // the first run warms cuBLASLt's plans up
          std::vector<LatentCache> caches;
          caches.push_back(engine.new_cache(len + 8));
          const std::vector<StepEngine::Input> in = prompts(caches, 1, len, c.vocab_size);
          engine.reset_stage_times();
          const auto t0 = Clock::now();
          engine.step(in);
          const double t = secs(t0, Clock::now());
          if ((way == 0 || way == 3) && rep == 1) {
            // Where the default path's time goes (GPU time between stage events).
            std::string line = fmt::format("  prefill {}{} by stage, ms GPU (host):", len,
                                           way == 3 ? " grouped experts" : "");
            for (const auto& st : engine.stage_times())
              if (st.gpu_ms > 0)
                line += fmt::format(" {} {:.1f} ({:.1f});", st.name, st.gpu_ms, st.host_ms);
            stages.push_back(line);
            fmt::print("{}\n", line);
          }
          if (rep == 1) {
            table.push_back(fmt::format("{:>24} {:>10.1f} {:>10.3f} {:>14} {:>14}",
                                        fmt::format("prefill {}{}", len,
                                                    way == 0   ? ""
                                                    : way == 1 ? " bf16"
                                                    : way == 2 ? " absorbed"
                                                               : " grouped experts"),
                                        len / t, 1e3 * t, "-", "-"));
            fmt::print("{}\n", table.back());
          }
        }
      }
    }
    fmt::print("\n{:>24} {:>10} {:>10} {:>14} {:>14}\n", "run", "tok/s", "ms/step", "GB/s (b=1)",
               "prefill tok/s");
    for (const std::string& line : table) fmt::print("{}\n", line);
    for (const std::string& line : stages) fmt::print("{}\n", line);
  } catch (const Error& e) {
    fmt::print(stderr, "bench_cuda_decode: {}\n", e.what());
    return 1;
  }
  return rc;
}
