// The registry over this fuzz build's plugins (compressed_tensors, modelopt, online_quant),
// sanitized and coverage-instrumented like the core. MOEQ_FUZZ_PLUGIN_DIR in the environment
// (run.sh sets it) follows a moved build; else the directory the build wrote them to.
#pragma once
#include "fuzz_check.hpp"

#include <moeq/host.hpp>
#include <moeq/registry.hpp>

#include <cstdlib>
#include <string>

namespace moeq::fuzz {

// Loaded once and never unloaded; call it from LLVMFuzzerInitialize, so that libFuzzer
// registers the plugins' coverage before fuzzing starts.
inline const Registry& plugin_registry() {
  static Registry* r = [] {
    host::set_log_sink([](moeq_log_level, const std::string&, const std::string&) {});
    auto* reg = new Registry(host::api());
    const char* dir = std::getenv("MOEQ_FUZZ_PLUGIN_DIR");
    reg->load_directory(dir != nullptr ? dir : MOEQ_FUZZ_PLUGIN_DIR);
    FUZZ_CHECK(reg->find("compressed_tensors") != nullptr);
    host::set_registry(reg);  // ModelOpt delegates method_create to compressed_tensors
    return reg;
  }();
  return *r;
}

}  // namespace moeq::fuzz
