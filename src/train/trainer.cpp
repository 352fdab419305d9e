#include "train/trainer.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/progress.h"
#include "core/threads.h"
#include "io/safetensors.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/plot.h"

namespace dsv3::train {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// metrics.jsonl, appended line by line (flushed: a crash loses at most the current line).
// Records carry the number of steps done. A resumed run first drops what came after its
// checkpoint (records of later steps, and the checkpoint/validation records of its own step,
// which it writes again), so the file reads as one uninterrupted run.
class MetricsLog {
 public:
  MetricsLog(const fs::path& path, int64_t resume_step) : path_(path) {
    std::string kept;
    if (std::ifstream in(path); in) {
      std::string line;
      while (std::getline(in, line)) {
        const json j = json::parse(line, nullptr, false);
        if (j.is_discarded()) continue;
        const int64_t step = j.value("step", int64_t(-1));
        if (step < resume_step || (step == resume_step && j.contains("loss"))) kept += line + "\n";
      }
    }
    write_file_atomic(path.string(), kept);
    out_.open(path, std::ios::app);
    DSV3_CHECK(out_, "cannot open {} for writing", path.string());
  }
  void write(const json& j) {
    out_ << j.dump() << "\n";
    out_.flush();
  }

 private:
  fs::path path_;
  std::ofstream out_;
};

double max_over_mean(const std::vector<int64_t>& load) {
  double mx = 0, sum = 0;
  for (int64_t v : load) {
    mx = std::max(mx, double(v));
    sum += double(v);
  }
  return sum > 0 ? mx * double(load.size()) / sum : 0.0;
}

}  // namespace

double evaluate(TrainModel& model, DataLoader& loader, int64_t batch, int64_t batches) {
  loader.seek({0, 0});
  const int64_t T = loader.seq_len();
  int64_t remaining = batches > 0 ? batches * batch : loader.windows();
  double sum = 0;
  int64_t tokens = 0;
  LossOptions opt;
  opt.mtp_lambda = 0;
  opt.balance_alpha = 0;
  while (remaining > 0) {
    const int64_t b = std::min(batch, remaining);
    remaining -= b;
    const DataLoader::Batch x = loader.next(b);
    const StepStats st = model.forward_backward(x.inputs.ptr<int32_t>(), x.targets.ptr<int32_t>(),
                                                b, T, opt, /*backward=*/false);
    sum += st.loss_main * double(st.tokens);
    tokens += st.tokens;
  }
  return tokens > 0 ? sum / double(tokens) : 0.0;
}

TrainSummary run_training(const TrainConfig& cfg, const TrainOptions& o) {
  if (cfg.threads > 0) set_num_threads(cfg.threads);
  const fs::path run(cfg.out);
  fs::create_directories(run);

  // ---- model, optimizer, data ----
  const ModelConfig mc = cfg.model_config();
  TrainModel model(mc);
  if (!cfg.init_from.empty())
    model.load(cfg.init_from);
  else
    model.init_random(cfg.seed, cfg.init_std);
  model.set_recompute(cfg.recompute);
  model.set_precision(cfg.precision);
  AdamW adamw(cfg.adamw, model.optimizer_params());
  DataLoader train(cfg.data, "train", cfg.seq_len, cfg.seed, mc.vocab_size);
  DataLoader val(cfg.data, "val", cfg.seq_len, 0, mc.vocab_size);
  DSV3_CHECK(cfg.seq_len <= mc.max_position_embeddings,
             "seq_len {} exceeds the model's max_position_embeddings {}", cfg.seq_len,
             mc.max_position_embeddings);

  // ---- resume ----
  TrainSummary sum;
  int64_t step = 0, tokens_seen = 0;
  double elapsed_before = 0;
  std::string resume_dir = o.resume_from;
  if (o.resume && resume_dir.empty()) {
    resume_dir = latest_checkpoint(run.string());
    DSV3_CHECK(!resume_dir.empty(), "--resume: {} has no checkpoint to resume from",
               (run / "checkpoints").string());
  }
  if (!resume_dir.empty()) {
    const json st = load_checkpoint(resume_dir, model, adamw);
    step = st.at("step").get<int64_t>();
    tokens_seen = st.at("tokens").get<int64_t>();
    elapsed_before = st.value("elapsed_s", 0.0);
    train.seek(
        {st.at("data").at("epoch").get<int64_t>(), st.at("data").at("index").get<int64_t>()});
    sum.checkpoint = resume_dir;
  }
  sum.first_step = step;
  write_file_atomic((run / "train_config.json").string(), cfg.to_json().dump(2) + "\n");
  MetricsLog log(run / "metrics.jsonl", step);

  auto state_json = [&] {
    const DataLoader::Position p = train.position();
    return json{{"step", step},
                {"tokens", tokens_seen},
                {"data", {{"epoch", p.epoch}, {"index", p.index}}},
                {"elapsed_s", elapsed_before},
                {"seed", cfg.seed}};
  };
  auto checkpoint = [&] {
    sum.checkpoint = save_checkpoint(run.string(), step, model, adamw, state_json(), cfg.keep_last);
    log.write({{"step", step}, {"checkpoint", sum.checkpoint}});
  };

  if (o.progress) {
    const auto mib = [](int64_t b) { return double(b) / double(1 << 20); };
    const MemoryReport mr =
        model.memory_report(cfg.batch_size, cfg.seq_len, cfg.precision, cfg.adamw.bf16_moments);
    std::string acts;
    for (Precision p : {Precision::kF32, Precision::kBf16, Precision::kFp8})
      acts +=
          fmt::format("{}{} {:.1f}", acts.empty() ? "" : ", ", precision_name(p),
                      mib(model.memory_report(cfg.batch_size, cfg.seq_len, p, true).activations));
    fmt::print(stderr,
               "model {:.2f}M parameters | memory: weights {:.1f} MiB (FP32 master), gradients "
               "{:.1f} MiB, AdamW moments {:.1f} MiB ({}), activations per step of {}×{} "
               "tokens {:.1f} MiB ({}; by precision: {} MiB)\n",
               double(model.num_values()) / 1e6, mib(mr.weights), mib(mr.grads), mib(mr.moments),
               cfg.adamw.bf16_moments ? "BF16" : "FP32", cfg.batch_size, cfg.seq_len,
               mib(mr.activations), precision_name(cfg.precision), acts);
  }
  ProgressBar bar(cfg.steps, cfg.log_every);
  const int64_t eval_batch = std::max<int64_t>(1, cfg.batch_size);
  double window_loss = 0;
  int64_t window_steps = 0, window_tokens = 0;
  auto window_start = Clock::now();
  std::vector<std::vector<int64_t>> window_load;
  const auto run_start = Clock::now();
  int64_t run_tokens = 0;

  while (step < cfg.steps) {
    if (o.stop && o.stop->load()) {
      sum.interrupted = true;
      break;
    }
    const auto t0 = Clock::now();
    const int64_t B = cfg.batch_at(step), T = cfg.seq_len;
    const DataLoader::Batch batch = train.next(B);
    model.zero_grads();
    const StepStats st = model.forward_backward(batch.inputs.ptr<int32_t>(),
                                                batch.targets.ptr<int32_t>(), B, T, cfg.loss);
    const std::vector<ParamRef>& params = adamw.params();
    const double norm = global_grad_norm(params);
    const double lr = cfg.lr_at(step, tokens_seen);
    if (!std::isfinite(st.loss) || !std::isfinite(norm)) {
      bar.finish();
      fail(
          "training diverged at step {}: loss {}, gradient norm {} (lr {:.3g}). Nothing was "
          "saved from this step; {}. Lower optimizer.lr or raise schedule.warmup (e.g. --set "
          "optimizer.lr={:.3g}) and resume.",
          step, st.loss, norm, lr,
          sum.checkpoint.empty() ? std::string("no checkpoint was written yet")
                                 : "the last good checkpoint is " + sum.checkpoint,
          cfg.schedule.peak / 3);
    }
    adamw.step(lr, clip_factor(norm, cfg.grad_clip));
    model.update_bias(st.expert_load, cfg.gamma_at(step));
    ++step;
    tokens_seen += B * T;
    run_tokens += B * T;
    elapsed_before += seconds_since(t0);

    window_loss += st.loss_main;
    window_tokens += B * T;
    ++window_steps;
    if (window_load.empty())
      window_load = st.expert_load;
    else
      for (size_t l = 0; l < window_load.size(); ++l)
        for (size_t e = 0; e < window_load[l].size(); ++e)
          window_load[l][e] += st.expert_load[l][e];

    if (step % cfg.log_every == 0 || step == cfg.steps) {
      const double tps = double(window_tokens) / seconds_since(window_start);
      json rec = {{"step", step},
                  {"loss", st.loss},
                  {"loss_main", window_loss / double(window_steps)},
                  {"loss_mtp", st.loss_mtp},
                  {"loss_balance", st.loss_balance},
                  {"lr", lr},
                  {"grad_norm", norm},
                  {"batch", B},
                  {"tokens", tokens_seen},
                  {"tokens_per_s", tps}};
      json maxmean = json::array();
      for (const auto& l : window_load) maxmean.push_back(max_over_mean(l));
      rec["load_max_over_mean"] = maxmean;
      rec["expert_load"] = window_load;
      log.write(rec);
      sum.train_loss = window_loss / double(window_steps);
      if (o.progress) {
        double worst = 0;
        for (double v : maxmean) worst = std::max(worst, v);
        bar.update(step, sum.first_step,
                   fmt::format("loss {:.4f} | lr {:.2e} | {:.0f} tok/s | load max/mean {:.2f}",
                               sum.train_loss, lr, tps, worst));
      }
      window_loss = 0;
      window_steps = window_tokens = 0;
      window_load.clear();
      window_start = Clock::now();
    }
    if (cfg.eval_every > 0 && step % cfg.eval_every == 0 && step < cfg.steps) {
      const double v = evaluate(model, val, eval_batch, cfg.eval_batches);
      log.write({{"step", step}, {"val_loss", v}});
      if (o.progress) bar.message(fmt::format("step {}: val loss {:.4f}", step, v));
    }
    if (cfg.save_every > 0 && step % cfg.save_every == 0 && step < cfg.steps) checkpoint();
  }
  bar.finish();
  sum.steps = step;
  sum.tokens_per_s = double(run_tokens) / seconds_since(run_start);
  checkpoint();
  if (!sum.interrupted) {
    sum.val_loss = evaluate(model, val, eval_batch, 0);
    log.write({{"step", step}, {"val_loss", sum.val_loss}, {"full_split", true}});
  }
  write_plots(run.string());
  return sum;
}

RunMetrics read_metrics(const std::string& run_dir) {
  const fs::path path = fs::path(run_dir) / "metrics.jsonl";
  std::ifstream in(path);
  DSV3_CHECK(in, "no metrics.jsonl in {} (is it a `dsv3 train` run directory?)", run_dir);
  RunMetrics m;
  m.train = {"train loss", {}};
  m.val = {"validation loss", {}};
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    const json j = json::parse(line, nullptr, false);
    // A run killed mid-write leaves a partial last line: skip it, it is not the user's data.
    if (j.is_discarded() || !j.is_object() || !j.contains("step")) continue;
    try {
      const double s = j["step"].get<double>();
      m.steps = std::max(m.steps, int64_t(s));
      if (j.contains("loss_main")) m.train.points.push_back({s, j["loss_main"].get<double>()});
      if (j.contains("val_loss")) {
        if (j.value("full_split", false))
          m.final_val = j["val_loss"].get<double>();
        else
          m.val.points.push_back({s, j["val_loss"].get<double>()});
      }
      if (j.contains("tokens")) m.tokens = std::max(m.tokens, j["tokens"].get<int64_t>());
      if (j.contains("load_max_over_mean")) {
        const auto& b = j["load_max_over_mean"];
        for (size_t l = m.balance.size(); l < b.size(); ++l)
          m.balance.push_back({fmt::format("MoE layer {}", l), {}});
        for (size_t l = 0; l < b.size(); ++l)
          m.balance[l].points.push_back({s, b[l].get<double>()});
      }
      if (j.contains("expert_load"))
        m.loads.push_back({s, j["expert_load"].get<std::vector<std::vector<int64_t>>>()});
    } catch (const json::exception& e) {
      fail("{}:{}: unexpected value in a metrics record ({})", path.string(), line_no, e.what());
    }
  }
  return m;
}

Series RunMetrics::val_curve(const std::string& name) const {
  Series s{name, val.points};
  if (std::isfinite(final_val)) s.points.push_back({double(steps), final_val});
  return s;
}

void write_plots(const std::string& run_dir) {
  const fs::path run(run_dir);
  const RunMetrics m = read_metrics(run_dir);
  const Series& train = m.train;
  const Series val = m.val_curve(m.val.name);
  const auto& balance = m.balance;
  const auto& loads = m.loads;
  PlotOptions lp;
  lp.title = "Loss (nats/token)";
  lp.x_label = "step";
  lp.y_label = "loss";
  line_plot((run / "loss.svg").string(), {train, val}, lp);
  if (balance.empty()) return;
  PlotOptions bp;
  bp.title = "Routed expert load: max / mean per MoE layer (1 = balanced)";
  bp.x_label = "step";
  bp.y_label = "max / mean";
  line_plot((run / "expert_balance.svg").string(), balance, bp);
  // Heatmap: rows are up to 32 logged windows spread over the run, columns every expert of
  // every MoE layer; a cell is the expert's load over its layer's mean in that window.
  std::vector<std::vector<double>> cells;
  std::vector<std::string> rows, cols;
  const size_t n_rows = std::min<size_t>(32, loads.size());
  for (size_t r = 0; r < n_rows; ++r) {
    const auto& [step, load] = loads[n_rows == 1 ? 0 : r * (loads.size() - 1) / (n_rows - 1)];
    std::vector<double> row;
    for (const auto& layer : load) {
      double mean = 0;
      for (int64_t v : layer) mean += double(v);
      mean /= double(std::max<size_t>(1, layer.size()));
      for (int64_t v : layer) row.push_back(mean > 0 ? double(v) / mean : 0.0);
    }
    cells.push_back(std::move(row));
    rows.push_back(fmt::format("step {}", int64_t(step)));
  }
  if (!loads.empty())
    for (size_t l = 0; l < loads[0].second.size(); ++l)
      for (size_t e = 0; e < loads[0].second[l].size(); ++e)
        cols.push_back(fmt::format("L{}:{}", l, e));
  HeatmapOptions hp;
  hp.title = "Expert load / layer mean over training (columns: MoE layer:expert)";
  hp.x_label = "MoE layer : routed expert";
  heatmap((run / "expert_load.svg").string(), cells, rows, cols, hp);
}

std::string compare_runs(const std::vector<std::string>& run_dirs,
                         const std::vector<std::string>& labels, const std::string& svg_path) {
  DSV3_CHECK(!run_dirs.empty(), "no run directories to compare");
  DSV3_CHECK(labels.empty() || labels.size() == run_dirs.size(),
             "{} labels for {} runs: give one label per run, or none", labels.size(),
             run_dirs.size());
  std::vector<Series> curves;
  std::string table = fmt::format("{:<24} {:>8} {:>12} {:>14} {:>12}\n", "run", "steps", "tokens",
                                  "final val loss", "vs first");
  double first = std::nan("");
  for (size_t i = 0; i < run_dirs.size(); ++i) {
    const RunMetrics m = read_metrics(run_dirs[i]);
    const std::string label =
        labels.empty() ? fs::path(run_dirs[i]).lexically_normal().filename().string() : labels[i];
    curves.push_back(m.val_curve(label));
    if (i == 0) first = m.final_val;
    const std::string rel = i == 0 || !std::isfinite(first) || !std::isfinite(m.final_val)
                                ? std::string("")
                                : fmt::format("{:+.3f}%", 100.0 * (m.final_val - first) / first);
    table += fmt::format("{:<24} {:>8} {:>12} {:>14} {:>12}\n", label, m.steps, m.tokens,
                         std::isfinite(m.final_val) ? fmt::format("{:.4f}", m.final_val)
                                                    : std::string("(unfinished)"),
                         rel);
  }
  if (!svg_path.empty()) {
    PlotOptions p;
    p.title = "Validation loss (nats/token)";
    p.x_label = "step";
    p.y_label = "loss";
    line_plot(svg_path, curves, p);
  }
  return table;
}

}  // namespace dsv3::train
