#include "train/plot.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "io/safetensors.h"

namespace dsv3::train {

namespace {

// Distinct colours that survive grey-scale printing (Tableau 10).
const char* kColours[] = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                          "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"};

std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string tick_label(double v) {
  if (v == 0) return "0";
  const double a = std::fabs(v);
  if (a >= 1e5 || a < 1e-3) return fmt::format("{:.1e}", v);
  std::string s = fmt::format("{:.4f}", v);
  s.erase(s.find_last_not_of('0') + 1);
  if (s.back() == '.') s.pop_back();
  return s;
}

// A sequential colour scale (viridis-like, 5 stops) for t in [0, 1].
std::string scale_colour(double t) {
  static const double stops[5][3] = {
      {68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
  t = std::clamp(std::isfinite(t) ? t : 0.0, 0.0, 1.0) * 4.0;
  const int i = std::min(3, int(t));
  const double f = t - i;
  int c[3];
  for (int k = 0; k < 3; ++k)
    c[k] = int(std::lround(stops[i][k] + f * (stops[i + 1][k] - stops[i][k])));
  return fmt::format("#{:02x}{:02x}{:02x}", c[0], c[1], c[2]);
}

std::string header(int w, int h) {
  return fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} "
      "{1}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"{0}\" height=\"{1}\" "
      "fill=\"white\"/>\n",
      w, h);
}

}  // namespace

std::vector<double> nice_ticks(double lo, double hi, int target) {
  if (!std::isfinite(lo) || !std::isfinite(hi)) return {};
  if (hi < lo) std::swap(lo, hi);
  if (hi == lo) return {lo};
  const double raw = (hi - lo) / std::max(1, target - 1);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (raw <= m * mag) {
      step = m * mag;
      break;
    }
  std::vector<double> t;
  const double first = std::ceil(lo / step - 1e-9);
  for (int i = 0;; ++i) {
    const double v = (first + i) * step;  // multiples, not a running sum: no drift
    if (v > hi + step * 1e-9) break;
    t.push_back(std::fabs(v) < step * 1e-9 ? 0.0 : v);
  }
  return t;
}

std::string line_plot_svg(const std::vector<Series>& series, const PlotOptions& opt) {
  const int W = opt.width, H = opt.height, left = 70, right = 170, top = 40, bottom = 50;
  const double pw = W - left - right, ph = H - top - bottom;
  auto fy = [&](double y) { return opt.log_y ? std::log10(y) : y; };
  auto usable = [&](const std::pair<double, double>& p) {
    return std::isfinite(p.first) && std::isfinite(p.second) && (!opt.log_y || p.second > 0);
  };
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  for (const Series& s : series)
    for (const auto& p : s.points)
      if (usable(p)) {
        x0 = std::min(x0, p.first);
        x1 = std::max(x1, p.first);
        y0 = std::min(y0, fy(p.second));
        y1 = std::max(y1, fy(p.second));
      }
  std::string out = header(W, H);
  out += fmt::format("<text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
                     left + pw / 2, escape(opt.title));
  if (!(x0 <= x1)) {  // nothing to draw
    out += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">no data</text>\n</svg>\n",
                       W / 2, H / 2);
    return out;
  }
  if (x1 == x0) x0 -= 0.5, x1 += 0.5;
  if (y1 == y0) y0 -= 0.5, y1 += 0.5;
  const double pad = 0.04 * (y1 - y0);
  y0 -= pad;
  y1 += pad;
  auto px = [&](double x) { return left + (x - x0) / (x1 - x0) * pw; };
  auto py = [&](double y) { return top + (1.0 - (fy(y) - y0) / (y1 - y0)) * ph; };
  // Axes, grid and ticks.
  out += fmt::format(
      "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#333\"/>\n", left,
      top, pw, ph);
  for (double t : nice_ticks(x0, x1)) {
    const double x = px(t);
    out += fmt::format(
        "<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\" stroke=\"#ddd\"/>\n<text "
        "x=\"{0:.1f}\" y=\"{3}\" text-anchor=\"middle\">{4}</text>\n",
        x, top, top + ph, top + ph + 16, tick_label(t));
  }
  for (double t : nice_ticks(y0, y1)) {
    const double y = top + (1.0 - (t - y0) / (y1 - y0)) * ph;
    const std::string label = opt.log_y ? tick_label(std::pow(10.0, t)) : tick_label(t);
    out += fmt::format(
        "<line x1=\"{0}\" y1=\"{1:.1f}\" x2=\"{2}\" y2=\"{1:.1f}\" stroke=\"#ddd\"/>\n<text "
        "x=\"{3}\" y=\"{4:.1f}\" text-anchor=\"end\">{5}</text>\n",
        left, y, left + pw, left - 6, y + 4, label);
  }
  out += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", left + pw / 2,
                     H - 12, escape(opt.x_label));
  out += fmt::format(
      "<text x=\"16\" y=\"{0}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {0})\">{1}"
      "</text>\n",
      top + ph / 2, escape(opt.y_label + (opt.log_y ? " (log)" : "")));
  // Series and legend.
  for (size_t i = 0; i < series.size(); ++i) {
    const char* colour = kColours[i % 10];
    std::string pts;
    int n = 0;
    for (const auto& p : series[i].points)
      if (usable(p)) {
        pts += fmt::format("{}{:.1f},{:.1f}", n ? " " : "", px(p.first), py(p.second));
        ++n;
      }
    if (n > 1)
      out += fmt::format(
          "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.8\" points=\"{}\"/>\n", colour,
          pts);
    if (n > 0 && n <= 40)
      for (const auto& p : series[i].points)
        if (usable(p))
          out += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"2.5\" fill=\"{}\"/>\n",
                             px(p.first), py(p.second), colour);
    const double ly = top + 14 + 20.0 * double(i);
    out += fmt::format(
        "<line x1=\"{0}\" y1=\"{1:.1f}\" x2=\"{2}\" y2=\"{1:.1f}\" stroke=\"{3}\" "
        "stroke-width=\"3\"/>\n<text x=\"{4}\" y=\"{5:.1f}\">{6}</text>\n",
        left + pw + 12, ly, left + pw + 32, colour, left + pw + 38, ly + 4, escape(series[i].name));
  }
  out += "</svg>\n";
  return out;
}

void line_plot(const std::string& path, const std::vector<Series>& series, const PlotOptions& opt) {
  write_file_atomic(path, line_plot_svg(series, opt));
}

std::string heatmap_svg(const std::vector<std::vector<double>>& values,
                        const std::vector<std::string>& row_labels,
                        const std::vector<std::string>& col_labels, const HeatmapOptions& opt) {
  const size_t rows = values.size();
  size_t cols = 0;
  for (const auto& r : values) cols = std::max(cols, r.size());
  const int left = 110, top = 40, bottom = 50, bar = 80;
  const int cell =
      opt.cell > 0 ? opt.cell : std::clamp(int(640 / std::max<size_t>(1, cols)), 4, 40);
  const int W = left + int(cols) * cell + bar + 20;
  const int H = top + int(rows) * cell + bottom;
  double lo = INFINITY, hi = -INFINITY;
  for (const auto& r : values)
    for (double v : r)
      if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  if (!(lo <= hi)) lo = 0, hi = 1;
  const double span = hi > lo ? hi - lo : 1.0;
  std::string out = header(std::max(W, 300), std::max(H, 120));
  out +=
      fmt::format("<text x=\"{}\" y=\"24\" font-size=\"15\">{}</text>\n", left, escape(opt.title));
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c = 0; c < values[r].size(); ++c) {
      const double v = values[r][c];
      out += fmt::format(
          "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\"><title>{} {}: "
          "{:.4g}</title></rect>\n",
          left + int(c) * cell, top + int(r) * cell, cell, cell,
          std::isfinite(v) ? scale_colour((v - lo) / span) : "#ffffff",
          escape(r < row_labels.size() ? row_labels[r] : ""),
          escape(c < col_labels.size() ? col_labels[c] : ""), v);
    }
    if (r < row_labels.size())
      out += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n", left - 6,
                         top + int(r) * cell + cell / 2 + 4, escape(row_labels[r]));
  }
  const size_t every = std::max<size_t>(1, size_t(24 / std::max(1, cell)));
  for (size_t c = 0; c < std::min(cols, col_labels.size()); c += every)
    out += fmt::format(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"10\">{}</text>\n",
        left + int(c) * cell + cell / 2, top + int(rows) * cell + 14, escape(col_labels[c]));
  out += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
                     left + int(cols) * cell / 2, H - 10, escape(opt.x_label));
  // Colour bar with its min / max.
  const int bx = left + int(cols) * cell + 20, bh = std::max(60, int(rows) * cell);
  for (int i = 0; i < 20; ++i)
    out += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"14\" height=\"{:.2f}\" fill=\"{}\"/>\n", bx,
                       top + bh - (i + 1) * bh / 20.0, bh / 20.0 + 0.5,
                       scale_colour((i + 0.5) / 20.0));
  out += fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"10\">{}</text>\n", bx + 18, top + 8,
                     tick_label(hi));
  out += fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"10\">{}</text>\n", bx + 18, top + bh,
                     tick_label(lo));
  out += "</svg>\n";
  return out;
}

void heatmap(const std::string& path, const std::vector<std::vector<double>>& values,
             const std::vector<std::string>& row_labels, const std::vector<std::string>& col_labels,
             const HeatmapOptions& opt) {
  write_file_atomic(path, heatmap_svg(values, row_labels, col_labels, opt));
}

}  // namespace dsv3::train
