#include "train/checkpoint.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "io/safetensors.h"

namespace dsv3::train {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

void fsync_dir(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

std::vector<fs::path> complete_checkpoints(const fs::path& root) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (const auto& de : fs::directory_iterator(root, ec)) {
    const std::string name = de.path().filename().string();
    if (de.is_directory() && name.starts_with("step-") &&
        fs::exists(de.path() / "trainer" / "state.json"))
      out.push_back(de.path());
  }
  std::sort(out.begin(), out.end());  // zero-padded step numbers sort as numbers
  return out;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  DSV3_CHECK(in, "cannot open {}", p.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::string latest_checkpoint(const std::string& run_dir) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  std::error_code ec;
  if (fs::exists(root / "latest", ec)) {
    std::string name = read_text(root / "latest");
    name.erase(name.find_last_not_of(" \n\r\t") + 1);
    if (!name.empty() && fs::exists(root / name / "trainer" / "state.json", ec))
      return (root / name).string();
  }
  const std::vector<fs::path> all = complete_checkpoints(root);
  return all.empty() ? std::string() : all.back().string();
}

std::string save_checkpoint(const std::string& run_dir, int64_t step, const TrainModel& model,
                            const AdamW& opt, const json& state, int64_t keep_last) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  fs::create_directories(root);
  const std::string name = fmt::format("step-{:08d}", step);
  const fs::path final_dir = root / name, tmp = root / (".tmp-" + name);
  const std::string previous = latest_checkpoint(run_dir);
  std::error_code ec;
  try {
    fs::remove_all(tmp);
    model.save(tmp.string(), "f32");
    fs::create_directories(tmp / "trainer");
    SafetensorsWriter w;
    w.set_metadata("format", "dsv3-adamw");
    auto& self = const_cast<AdamW&>(opt);  // the moment accessors are non-const views
    for (size_t i = 0; i < opt.params().size(); ++i) {
      w.add("m." + opt.params()[i].name, self.first_moments()[i]);
      w.add("v." + opt.params()[i].name, self.second_moments()[i]);
    }
    w.write((tmp / "trainer" / "optimizer.safetensors").string());
    json st = state;
    st["optimizer_steps"] = opt.steps();
    write_file_atomic((tmp / "trainer" / "state.json").string(), st.dump(2) + "\n");
    fsync_dir(tmp);
    // Replace a checkpoint of the same step (a resumed run saving again) without a window in
    // which neither exists.
    const fs::path old = root / (".old-" + name);
    fs::remove_all(old);
    if (fs::exists(final_dir)) fs::rename(final_dir, old);
    fs::rename(tmp, final_dir);
    fsync_dir(root);
    fs::remove_all(old, ec);
    write_file_atomic((root / "latest").string(), name + "\n");
  } catch (const std::exception& e) {
    fs::remove_all(tmp, ec);
    fail("could not write checkpoint {}: {}{}", final_dir.string(), e.what(),
         previous.empty() ? std::string()
                          : fmt::format(" (the previous checkpoint {} is intact)", previous));
  }
  std::vector<fs::path> all = complete_checkpoints(root);
  while (int64_t(all.size()) > keep_last) {
    if (all.front() != final_dir) fs::remove_all(all.front(), ec);
    all.erase(all.begin());
  }
  return final_dir.string();
}

json load_checkpoint(const std::string& ckpt_dir, TrainModel& model, AdamW& opt) {
  const fs::path dir(ckpt_dir);
  const fs::path state_path = dir / "trainer" / "state.json";
  DSV3_CHECK(fs::exists(state_path),
             "{} is not a training checkpoint (no trainer/state.json): resume needs one written "
             "by `dsv3 train`",
             ckpt_dir);
  json state;
  try {
    state = json::parse(read_text(state_path));
  } catch (const json::exception& e) {
    fail("{} is not valid JSON ({})", state_path.string(), e.what());
  }
  model.load(ckpt_dir);
  const auto file = SafetensorsFile::open((dir / "trainer" / "optimizer.safetensors").string());
  for (size_t i = 0; i < opt.params().size(); ++i) {
    const ParamRef& p = opt.params()[i];
    for (auto [prefix, dst] :
         {std::pair{"m.", &opt.first_moments()[i]}, std::pair{"v.", &opt.second_moments()[i]}}) {
      const Tensor t = file->get(prefix + p.name);
      DSV3_CHECK(t.numel() == p.size, "optimizer state {}{} has {} values, the parameter has {}",
                 prefix, p.name, t.numel(), p.size);
      const Tensor conv = t.to(dst->dtype());
      std::memcpy(dst->data(), conv.data(), conv.nbytes());
    }
  }
  DSV3_CHECK(state.contains("optimizer_steps") && state["optimizer_steps"].is_number_integer(),
             "{} has no optimizer_steps", state_path.string());
  opt.set_steps(state["optimizer_steps"].get<int64_t>());
  return state;
}

}  // namespace dsv3::train
