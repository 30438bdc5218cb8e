// The real models' MoE geometries of bench/geo_dims.txt (NAME=E,TOPK,H,I a line), read for the
// tests that hold the GPU plans and the compiled kernel variants to them.
#pragma once
#include <doctest/doctest.h>

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace moeq::test {

struct Geometry {
  std::string name;
  int64_t experts = 0, top_k = 0, hidden = 0, inter = 0;
};

inline std::vector<Geometry> read_geometries() {
  std::ifstream in(MOEQ_TEST_GEO_DIMS);
  REQUIRE_MESSAGE(in.good(), "cannot read " MOEQ_TEST_GEO_DIMS);
  std::vector<Geometry> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const auto eq = line.find('=');
    REQUIRE_MESSAGE(eq != std::string::npos, "geo_dims.txt line '" << line << "' is not NAME=E,TOPK,H,I");
    Geometry g{line.substr(0, eq)};
    std::istringstream v(line.substr(eq + 1));
    char c1 = 0, c2 = 0, c3 = 0;
    v >> g.experts >> c1 >> g.top_k >> c2 >> g.hidden >> c3 >> g.inter;
    REQUIRE_MESSAGE((v && c1 == ',' && c2 == ',' && c3 == ',' && (v >> std::ws).eof()),
                    "geo_dims.txt line '" << line << "' is not NAME=E,TOPK,H,I");
    out.push_back(g);
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
