// Small string helpers shared by the tools (the CLI and the GPU harness).
#pragma once
#include <sstream>
#include <string>
#include <vector>

namespace moeq {

// "a,b,,c" -> {"a", "b", "c"}: comma-separated items, empty ones dropped.
inline std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

}  // namespace moeq
