// Per-layer verdicts in words (the JSON form is moeq::layer_report_json, core/load_report.hpp).
#include "commands.hpp"

#include <cstdio>
#include <iostream>
#include <sstream>

namespace moeq::cli {

std::string fmt_shape(const std::vector<int64_t>& s) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < s.size(); ++i) os << (i ? "," : "") << s[i];
  os << ']';
  return os.str();
}

std::string verdict(const LayerReport& r) {
  if (!r.ok()) return "FAILED";
  if (r.waived.empty()) return "strict load clean";
  return "loaded, not strict (" + std::to_string(r.waived.size()) + " waived)";
}

void print_report(const LayerReport& r, bool verbose) {
  std::cout << "layer " << r.prefix << "  (" << r.family << ", experts " << r.experts_module << ", weights "
            << r.weight_dtype << ")\n";
  if (!r.plugin.empty()) std::cout << "  plugin: " << r.plugin << " — " << r.plugin_why << "\n";
  for (const auto& p : r.probes)
    std::cout << "    probe " << (p.plugin ? p.plugin->name : "?") << ": score " << p.score << " — " << p.reason
              << "\n";
  if (r.describe_json != "{}") std::cout << "  method: " << r.describe_json << "\n";
  if (verbose) {
    std::cout << "  tensors:\n";
    for (const auto& e : r.entries) {
      char line[512];
      std::snprintf(line, sizeof line, "    %-64s %-8s %-16s %-9s %s%s%s\n", e.tensor.c_str(), e.dtype.c_str(),
                    fmt_shape(e.shape).c_str(), ledger_state_name(e.state), e.routed_to.c_str(),
                    e.detail.empty() ? "" : "  — ", e.detail.c_str());
      std::cout << line;
    }
    std::cout << "  parameters:\n";
    for (const auto& c : r.params)
      std::cout << "    " << c.name << " " << c.dtype << " " << fmt_shape(c.shape) << ": " << c.numel
                << " elements, " << c.written
                << " written, " << c.defaulted << " declared default"
                << (c.first_gap.empty() ? "" : ", first unwritten at " + c.first_gap) << "\n";
  }
  std::cout << "  ledger: " << r.count(LedgerEntry::State::kConsumed) << " consumed, "
            << r.count(LedgerEntry::State::kSkipped) << " skipped, " << r.count(LedgerEntry::State::kNotLocal)
            << " not local, " << r.count(LedgerEntry::State::kRouter) << " router, "
            << r.count(LedgerEntry::State::kUnknown) << " unknown, " << r.count(LedgerEntry::State::kError)
            << " errors — " << verdict(r) << "\n";
  for (const auto& p : r.problems) std::cout << "  problem: " << p << "\n";
  for (const auto& w : r.waived) std::cout << "  waived (--no-strict): " << w << "\n";
}

}  // namespace moeq::cli
