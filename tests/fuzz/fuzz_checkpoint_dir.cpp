// Fuzz target: a whole checkpoint directory. The input is cut at each "\n#moeq-part#\n" into
// config.json, model.safetensors.index.json and two shards (an empty part: no such file);
// they are written to a private directory and opened as a checkpoint, so that the index and
// shard agreement, duplicates across shards and the limits are fuzzed together.
#include "fuzz_check.hpp"

#include <moeq/checkpoint.hpp>
#include <moeq/error.hpp>
#include <moeq/expert_name_router.hpp>
#include <moeq/model_config.hpp>

#include <unistd.h>

#include <cstdlib>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kCut = "\n#moeq-part#\n";
const char* const kNames[] = {"config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
                              "model-00002-of-00002.safetensors"};

const fs::path& work_dir() {
  static const fs::path dir = [] {
    const fs::path base = fs::exists("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path();
    fs::path d = base / ("moeq_fuzz_ckpt_" + std::to_string(::getpid()));
    fs::create_directories(d);
    std::atexit([] { std::error_code ec; fs::remove_all(work_dir(), ec); });
    return d;
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view rest = moeq::fuzz::text_of(data, size);
  const fs::path& dir = work_dir();
  for (const char* name : kNames) {
    const size_t cut = rest.find(kCut);
    const std::string_view part = rest.substr(0, cut);
    rest = cut == std::string_view::npos ? std::string_view() : rest.substr(cut + kCut.size());
    const fs::path path = dir / name;
    fs::remove(path);
    if (part.empty()) continue;
    std::ofstream(path, std::ios::binary).write(part.data(), static_cast<std::streamsize>(part.size()));
  }
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
