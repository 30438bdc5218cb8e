// The real models' MoE geometries of bench/geo_dims.txt (NAME=E,TOPK,H,I a line), read for the
// tests that hold the GPU plans and the compiled kernel variants to them.
#pragma once
#include "../tools/gpu_harness/named_shapes.hpp"

#include <doctest/doctest.h>

#include <fstream>
#include <string>
#include <vector>

namespace moeq::test {

using Geometry = moeq::gpu_harness::ShapeSpec;

// Each line through the parser of `moeq bench apply --dims`.
inline std::vector<Geometry> read_geometries() {
  std::ifstream in(MOEQ_TEST_GEO_DIMS);
  REQUIRE_MESSAGE(in.good(), "cannot read " MOEQ_TEST_GEO_DIMS);
  std::vector<Geometry> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::string why;
    const std::optional<Geometry> g = moeq::gpu_harness::parse_geometry(line, why);
    REQUIRE_MESSAGE(g.has_value(), "geo_dims.txt line '" << line << "': " << why);
    out.push_back(*g);
  }
  return out;
}

// Each geometry whole, its I split over two ranks (where each half stays a multiple of 16) and
// its experts split over two ranks (the larger half): the shards a rank's plan sees.
inline std::vector<Geometry> geometry_shards() {
  std::vector<Geometry> out;
  for (const Geometry& g : read_geometries()) {
    out.push_back(g);
    if (g.inter % 32 == 0) out.push_back({g.name + "-tp2", g.experts, g.top_k, g.hidden, g.inter / 2});
    if (g.experts >= 2) out.push_back({g.name + "-ep2", g.experts - g.experts / 2, g.top_k, g.hidden, g.inter});
  }
  return out;
}

}  // namespace moeq::test
