// SVG charts: structure, skipped non-finite points, degenerate ranges, tick values.
#include <gtest/gtest.h>

#include <cmath>

#include "train/plot.h"

namespace dsv3::train {
namespace {

int count(const std::string& s, const std::string& what) {
  int n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

// Every opened element is closed (self-closing or with its end tag).
bool balanced(const std::string& s) {
  int depth = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '<') continue;
    const size_t end = s.find('>', i);
    if (end == std::string::npos) return false;
    if (s[i + 1] == '/')
      --depth;
    else if (s[end - 1] != '/')
      ++depth;
    if (depth < 0) return false;
    i = end;
  }
  return depth == 0;
}

TEST(Plot, LinePlotHasOnePolylinePerSeriesAndSkipsNonFinite) {
  Series a{"train <loss>", {{0, 3.0}, {1, 2.5}, {2, NAN}, {3, 2.0}}};
  Series b{"val", {{1, 2.8}, {3, INFINITY}}};
  PlotOptions o;
  o.title = "Loss";
  const std::string svg = line_plot_svg({a, b}, o);
  EXPECT_TRUE(balanced(svg));
  EXPECT_EQ(count(svg, "<polyline"), 1);  // b has a single finite point: a dot, no line
  EXPECT_NE(svg.find("train &lt;loss&gt;"), std::string::npos);
  const size_t p = svg.find("points=\"");
  const std::string pts = svg.substr(p + 8, svg.find('"', p + 8) - p - 8);
  EXPECT_EQ(count(pts, ","), 3);  // the NaN point is skipped
  EXPECT_EQ(count(svg, "<circle"), 4);
}

TEST(Plot, DegenerateInputs) {
  PlotOptions o;
  EXPECT_NE(line_plot_svg({}, o).find("no data"), std::string::npos);
  EXPECT_TRUE(balanced(line_plot_svg({Series{"one", {{5, 1.0}}}}, o)));
  EXPECT_TRUE(balanced(line_plot_svg({Series{"flat", {{0, 2.0}, {9, 2.0}}}}, o)));
  o.log_y = true;
  EXPECT_TRUE(balanced(line_plot_svg({Series{"log", {{0, 100.0}, {1, 0.0}, {2, 1.0}}}}, o)));
}

TEST(Plot, HeatmapHasOneCellPerValue) {
  const std::vector<std::vector<double>> v = {{1, 2, 3}, {0.5, NAN, 4}};
  const std::string svg = heatmap_svg(v, {"r0", "r1"}, {"a", "b", "c"}, HeatmapOptions{});
  EXPECT_TRUE(balanced(svg));
  EXPECT_EQ(count(svg, "<title>"), 6);
  EXPECT_NE(svg.find("r1"), std::string::npos);
}

TEST(Plot, NiceTicks) {
  EXPECT_EQ(nice_ticks(0, 10, 6), (std::vector<double>{0, 2, 4, 6, 8, 10}));
  const std::vector<double> t = nice_ticks(3.7, 4.3, 6);
  ASSERT_GE(t.size(), 3u);
  EXPECT_NEAR(t[1] - t[0], 0.2, 1e-12);  // raw step 0.12 rounds up to 2·10⁻¹
  EXPECT_NEAR(t[0], 3.8, 1e-12);
  EXPECT_EQ(nice_ticks(2, 2), std::vector<double>{2});
}

}  // namespace
}  // namespace dsv3::train
