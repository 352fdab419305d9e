// A one-line progress display for long work (training, data preparation): on a terminal it
// redraws in place with a bar, rate and ETA; when stderr is a file or pipe (CI logs) it
// prints a plain line every `line_every` updates instead, so logs stay readable.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

#include <fmt/format.h>

namespace dsv3 {

// "1h02m", "3m07s", "12s".
inline std::string format_duration(double seconds) {
  if (!(seconds >= 0) || seconds > 1e7) return "?";
  const int64_t s = int64_t(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}h{:02d}m", s / 3600, (s % 3600) / 60);
  if (s >= 60) return fmt::format("{}m{:02d}s", s / 60, s % 60);
  return fmt::format("{}s", s);
}

class ProgressBar {
 public:
  ProgressBar(int64_t total, int64_t line_every = 10, FILE* out = stderr)
      : total_(total),
        line_every_(line_every < 1 ? 1 : line_every),
        out_(out),
        tty_(isatty(fileno(out)) != 0),
        start_(Clock::now()) {}

  // `done` of `total` finished; `first` is where this run started (a resumed run's ETA
  // counts only its own progress); `text` follows the bar ("loss 3.21 | lr 1e-3 ...").
  void update(int64_t done, int64_t first, const std::string& text) {
    const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
    const double rate = done > first ? double(done - first) / elapsed : 0.0;
    const double eta = rate > 0 ? double(total_ - done) / rate : -1.0;
    const double frac = total_ > 0 ? double(done) / double(total_) : 1.0;
    if (tty_) {
      constexpr int kWidth = 24;
      const int filled = int(frac * kWidth);
      std::string bar(size_t(filled), '=');
      if (filled < kWidth) bar += '>' + std::string(size_t(kWidth - filled - 1), ' ');
      fmt::print(out_, "\r\033[K{}/{} [{}] {:3.0f}% | {} | ETA {}", done, total_, bar, 100.0 * frac,
                 text, format_duration(eta));
      std::fflush(out_);
      drawn_ = true;
    } else if (done == total_ || (done - first) % line_every_ == 0) {
      fmt::print(out_, "{}/{} ({:.0f}%) | {} | ETA {}\n", done, total_, 100.0 * frac, text,
                 format_duration(eta));
      std::fflush(out_);
    }
  }
  // Prints a message on its own line without breaking the bar.
  void message(const std::string& text) {
    if (drawn_) fmt::print(out_, "\r\033[K");
    fmt::print(out_, "{}\n", text);
    std::fflush(out_);
  }
  void finish() {
    if (drawn_) fmt::print(out_, "\n");
    drawn_ = false;
  }

 private:
  using Clock = std::chrono::steady_clock;
  int64_t total_, line_every_;
  FILE* out_;
  bool tty_, drawn_ = false;
  Clock::time_point start_;
};

}  // namespace dsv3
