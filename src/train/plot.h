// Standalone SVG charts for training runs (no dependencies): line plots of loss curves and
// expert balance, and heatmaps of expert load. Files are written atomically.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace dsv3::train {

struct Series {
  std::string name;
  std::vector<std::pair<double, double>> points;  // (x, y); non-finite points are skipped
};

struct PlotOptions {
  std::string title, x_label, y_label;
  bool log_y = false;
  int width = 800, height = 480;
};

// One polyline per series (plus a dot per point when a series has few), axes with rounded
// tick values, and a legend.
std::string line_plot_svg(const std::vector<Series>& series, const PlotOptions& opt);
void line_plot(const std::string& path, const std::vector<Series>& series, const PlotOptions& opt);

struct HeatmapOptions {
  std::string title, x_label, y_label;
  int cell = 0;  // cell size in pixels (0: fit ~800 px wide)
};

// values[row][col] as coloured cells (a sequential scale from the minimum to the maximum,
// shown in a colour bar), row and column labels at the edges.
std::string heatmap_svg(const std::vector<std::vector<double>>& values,
                        const std::vector<std::string>& row_labels,
                        const std::vector<std::string>& col_labels, const HeatmapOptions& opt);
void heatmap(const std::string& path, const std::vector<std::vector<double>>& values,
             const std::vector<std::string>& row_labels, const std::vector<std::string>& col_labels,
             const HeatmapOptions& opt);

// "Nice" tick values covering [lo, hi] (1, 2, 5 × 10^k steps), about `target` of them.
std::vector<double> nice_ticks(double lo, double hi, int target = 6);

}  // namespace dsv3::train
