// Fuzz target: the whole strict load path with the real plugins. The input (format in
// strict_load_case.hpp) is two option bytes, then config.json, model.safetensors and
// hf_quant_config.json; they are written to a private directory, opened, loaded on CPU with
// the registry over this build's plugins (compressed_tensors, modelopt, online_quant) under
// varied strictness, TP / EP placement and online scheme, and every loaded layer's CPU apply
// and dequantized weights run. Success or moeq::Error only; anything else is a finding.
// MOEQ_FUZZ_VERBOSE=1 prints each input's outcome (for triage: `fuzz_strict_load FILE...`).
#include "fuzz_plugins.hpp"
#include "fuzz_work_dir.hpp"
#include "strict_load_case.hpp"

#include <cstdio>
#include <cstdlib>

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  moeq::fuzz::plugin_registry();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool verbose = std::getenv("MOEQ_FUZZ_VERBOSE") != nullptr;
  const std::string outcome = moeq::fuzz::run_strict_load(moeq::fuzz::text_of(data, size),
                                                          moeq::fuzz::plugin_registry(), moeq::fuzz::work_dir("strict_load"));
  if (verbose) std::fprintf(stderr, "outcome: %s\n", outcome.c_str());
  return 0;
}
