#include "train/train_config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "core/error.h"

namespace dsv3::train {

using json = nlohmann::json;

namespace {

// Reads fields of one JSON object, remembering which keys were used so that a misspelt key
// is an error rather than a silently ignored setting.
class Section {
 public:
  Section(const json& j, std::string path, const std::string& source)
      : j_(j), path_(std::move(path)), source_(source) {
    DSV3_CHECK(j_.is_object(), "{}: '{}' must be an object", source_,
               path_.empty() ? "(top)" : path_);
  }
  ~Section() noexcept(false) {
    if (std::uncaught_exceptions()) return;
    for (const auto& [k, v] : j_.items())
      DSV3_CHECK(used_.count(k), "{}: unknown setting '{}{}'", source_, prefix(), k);
  }
  template <typename T>
  void get(const char* key, T& out) {
    used_.insert(key);
    if (!j_.contains(key) || j_[key].is_null()) return;
    try {
      out = j_[key].get<T>();
    } catch (const json::exception&) {
      fail("{}: '{}{}' has the wrong type ({})", source_, prefix(), key, j_[key].dump());
    }
  }
  Section sub(const char* key) {
    used_.insert(key);
    static const json empty = json::object();
    return Section(j_.contains(key) ? j_[key] : empty, prefix() + key, source_);
  }
  bool has(const char* key) const { return j_.contains(key); }
  const json& at(const char* key) {
    used_.insert(key);
    return j_[key];
  }

 private:
  std::string prefix() const { return path_.empty() ? "" : path_ + "."; }
  const json& j_;
  std::string path_;
  const std::string& source_;
  std::set<std::string> used_;
};

json yaml_to_json(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Map: {
      json o = json::object();
      for (const auto& kv : n) o[kv.first.as<std::string>()] = yaml_to_json(kv.second);
      return o;
    }
    case YAML::NodeType::Sequence: {
      json a = json::array();
      for (const auto& v : n) a.push_back(yaml_to_json(v));
      return a;
    }
    case YAML::NodeType::Scalar: {
      const std::string s = n.Scalar();
      if (n.Tag() == "!") return s;  // quoted: a string
      json v = json::parse(s, nullptr, false);
      if (!v.is_discarded() && !v.is_object() && !v.is_array()) return v;
      if (s == "True" || s == "yes") return true;
      if (s == "False" || s == "no") return false;
      return s;
    }
    default:
      return nullptr;
  }
}

}  // namespace

json TrainConfig::read_file(const std::string& path) {
  std::ifstream in(path);
  DSV3_CHECK(in, "cannot open training config {}", path);
  std::stringstream ss;
  ss << in.rdbuf();
  const bool yaml = path.ends_with(".yaml") || path.ends_with(".yml");
  try {
    return yaml ? yaml_to_json(YAML::Load(ss.str())) : json::parse(ss.str());
  } catch (const std::exception& e) {
    fail("{} is not valid {}: {}", path, yaml ? "YAML" : "JSON", e.what());
  }
}

void TrainConfig::apply_overrides(json& j, const std::vector<std::string>& sets) {
  for (const std::string& s : sets) {
    const size_t eq = s.find('=');
    DSV3_CHECK(eq != std::string::npos && eq > 0, "--set expects path=value, got '{}'", s);
    const std::string path = s.substr(0, eq), text = s.substr(eq + 1);
    json value = json::parse(text, nullptr, false);
    if (value.is_discarded()) value = text;
    json* node = &j;
    size_t start = 0;
    while (true) {
      const size_t dot = path.find('.', start);
      const std::string key = path.substr(start, dot == std::string::npos ? dot : dot - start);
      DSV3_CHECK(!key.empty(), "--set: empty field name in '{}'", path);
      if (!node->is_object()) *node = json::object();
      if (dot == std::string::npos) {
        (*node)[key] = value;
        break;
      }
      node = &(*node)[key];
      start = dot + 1;
    }
  }
}

TrainConfig TrainConfig::from_json(const json& j, const std::string& source) {
  TrainConfig c;
  Section top(j, "", source);
  if (top.has("model")) c.model = top.at("model");
  top.get("init_from", c.init_from);
  top.get("init_std", c.init_std);
  top.get("data", c.data);
  top.get("out", c.out);
  top.get("seq_len", c.seq_len);
  top.get("batch_size", c.batch_size);
  top.get("steps", c.steps);
  top.get("seed", c.seed);
  top.get("recompute", c.recompute);
  {
    std::string p = precision_name(c.precision);
    top.get("precision", p);
    c.precision = parse_precision(p);
  }
  top.get("log_every", c.log_every);
  top.get("threads", c.threads);
  {
    Section s = top.sub("ramp");
    s.get("start", c.ramp_start);
    s.get("steps", c.ramp_steps);
  }
  {
    Section s = top.sub("optimizer");
    s.get("lr", c.schedule.peak);
    s.get("beta1", c.adamw.beta1);
    s.get("beta2", c.adamw.beta2);
    s.get("eps", c.adamw.eps);
    s.get("weight_decay", c.adamw.weight_decay);
    s.get("bf16_moments", c.adamw.bf16_moments);
    s.get("grad_clip", c.grad_clip);
  }
  c.schedule.warmup = -1;
  c.schedule.decay_start = -1;
  c.schedule.decay_steps = -1;
  {
    Section s = top.sub("schedule");
    s.get("warmup", c.schedule.warmup);
    s.get("decay_start", c.schedule.decay_start);
    s.get("decay_steps", c.schedule.decay_steps);
    s.get("min_lr", c.schedule.min_lr);
    s.get("final_lr", c.schedule.final_lr);
    s.get("final_start", c.schedule.final_start);
    std::string unit = "steps";
    s.get("unit", unit);
    DSV3_CHECK(unit == "steps" || unit == "tokens",
               "{}: schedule.unit must be \"steps\" or \"tokens\", got \"{}\"", source, unit);
    c.schedule_in_tokens = unit == "tokens";
  }
  {
    Section s = top.sub("loss");
    s.get("mtp_lambda", c.loss.mtp_lambda);
    s.get("balance_alpha", c.loss.balance_alpha);
  }
  {
    Section s = top.sub("balance");
    s.get("gamma", c.bias_gamma);
    s.get("gamma_until", c.bias_gamma_until);
  }
  {
    Section s = top.sub("eval");
    s.get("every", c.eval_every);
    s.get("batches", c.eval_batches);
  }
  {
    Section s = top.sub("checkpoint");
    s.get("every", c.save_every);
    s.get("keep_last", c.keep_last);
  }
  c.adamw.lr = c.schedule.peak;
  // Defaults in steps, converted when the schedule counts tokens.
  const int64_t unit = c.schedule_in_tokens ? c.batch_size * c.seq_len : 1;
  if (c.schedule.warmup < 0) c.schedule.warmup = std::min<int64_t>(100, c.steps / 10) * unit;
  if (c.schedule.decay_start < 0) c.schedule.decay_start = c.schedule.warmup;
  if (c.schedule.decay_steps < 0)
    c.schedule.decay_steps = std::max<int64_t>(0, c.steps * unit - c.schedule.decay_start);
  DSV3_CHECK(!c.model.is_null() || !c.init_from.empty(),
             "{}: set 'model' (a config object or config.json path) or 'init_from' (a checkpoint)",
             source);
  DSV3_CHECK(!c.data.empty(), "{}: 'data' (a directory from `dsv3 data prepare`) is required",
             source);
  DSV3_CHECK(c.seq_len >= 2, "{}: seq_len must be at least 2, got {}", source, c.seq_len);
  DSV3_CHECK(c.batch_size >= 1, "{}: batch_size must be positive, got {}", source, c.batch_size);
  DSV3_CHECK(c.steps >= 0, "{}: steps must be >= 0, got {}", source, c.steps);
  DSV3_CHECK(c.ramp_steps >= 0 &&
                 (c.ramp_steps == 0 || (c.ramp_start >= 1 && c.ramp_start <= c.batch_size)),
             "{}: ramp.start must be in [1, batch_size] when ramp.steps > 0", source);
  DSV3_CHECK(c.eval_every >= 0 && c.save_every >= 0 && c.keep_last >= 1 && c.log_every >= 1,
             "{}: eval.every and checkpoint.every must be >= 0, checkpoint.keep_last and "
             "log_every >= 1",
             source);
  DSV3_CHECK(c.loss.mtp_lambda >= 0 && c.loss.balance_alpha >= 0 && c.bias_gamma >= 0,
             "{}: loss.mtp_lambda, loss.balance_alpha and balance.gamma must be >= 0", source);
  c.schedule.validate();
  return c;
}

json TrainConfig::to_json() const {
  json j;
  if (!model.is_null()) j["model"] = model;
  if (!init_from.empty()) j["init_from"] = init_from;
  j["init_std"] = init_std;
  j["data"] = data;
  j["out"] = out;
  j["seq_len"] = seq_len;
  j["batch_size"] = batch_size;
  j["ramp"] = {{"start", ramp_start}, {"steps", ramp_steps}};
  j["steps"] = steps;
  j["seed"] = seed;
  j["optimizer"] = {{"lr", schedule.peak},
                    {"beta1", adamw.beta1},
                    {"beta2", adamw.beta2},
                    {"eps", adamw.eps},
                    {"weight_decay", adamw.weight_decay},
                    {"bf16_moments", adamw.bf16_moments},
                    {"grad_clip", grad_clip}};
  j["schedule"] = {{"warmup", schedule.warmup},
                   {"decay_start", schedule.decay_start},
                   {"decay_steps", schedule.decay_steps},
                   {"min_lr", schedule.min_lr},
                   {"final_lr", schedule.final_lr},
                   {"final_start", schedule.final_start},
                   {"unit", schedule_in_tokens ? "tokens" : "steps"}};
  j["loss"] = {{"mtp_lambda", loss.mtp_lambda}, {"balance_alpha", loss.balance_alpha}};
  j["balance"] = {{"gamma", bias_gamma}, {"gamma_until", bias_gamma_until}};
  j["recompute"] = recompute;
  j["precision"] = precision_name(precision);
  j["eval"] = {{"every", eval_every}, {"batches", eval_batches}};
  j["checkpoint"] = {{"every", save_every}, {"keep_last", keep_last}};
  j["log_every"] = log_every;
  j["threads"] = threads;
  return j;
}

ModelConfig TrainConfig::model_config() const {
  if (model.is_null()) return ModelConfig::load(init_from);
  if (model.is_string()) return ModelConfig::load(model.get<std::string>());
  return ModelConfig::from_json(model, "training config 'model'");
}

int64_t TrainConfig::batch_at(int64_t step) const {
  if (ramp_steps <= 0 || step >= ramp_steps) return batch_size;
  return ramp_start + (batch_size - ramp_start) * step / ramp_steps;
}

double TrainConfig::lr_at(int64_t step, int64_t tokens) const {
  return schedule.at(schedule_in_tokens ? tokens : step);
}

double TrainConfig::gamma_at(int64_t step) const {
  return bias_gamma_until >= 0 && step >= bias_gamma_until ? 0.0 : bias_gamma;
}

}  // namespace dsv3::train
