// Fuzz target: a whole checkpoint directory. The input is cut at each "\n#moeq-part#\n" into
// config.json, model.safetensors.index.json and two shards (an empty part: no such file);
// they are written to a private directory and opened as a checkpoint, so that the index and
// shard agreement, duplicates across shards and the limits are fuzzed together.
#include "fuzz_check.hpp"
#include "fuzz_work_dir.hpp"

#include <moeq/checkpoint.hpp>
#include <moeq/error.hpp>
#include <moeq/expert_name_router.hpp>
#include <moeq/model_config.hpp>

#include <filesystem>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

const char* const kNames[] = {"config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
                              "model-00002-of-00002.safetensors"};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const fs::path& dir = moeq::fuzz::work_dir("ckpt");
  moeq::fuzz::write_parts(moeq::fuzz::text_of(data, size), dir, kNames);
  moeq::ReaderLimits limits;
  limits.max_tensors = 64;  // small caps, so that the fuzzer can reach them
  limits.max_files = 2;
  try {
    const moeq::Checkpoint ck = moeq::Checkpoint::open(dir, limits);
    FUZZ_CHECK(!ck.files().empty());
    FUZZ_CHECK(ck.tensors().size() <= limits.max_tensors);
    for (const auto& [name, info] : ck.tensors()) {
      FUZZ_CHECK(ck.find(name) == &info);
      moeq::route_tensor_name(name);
    }
    moeq::parse_moe_config(ck.config(), dir / "config.json");
  } catch (const moeq::Error&) {
  }
  return 0;
}
