// Writes seed inputs for every fuzz target from checkpoints made by the project's own writer:
//   fuzz_make_seeds OUT_DIR   ->  OUT_DIR/<target>/seed_*
// The committed hand-written seeds (tests/fuzz/corpus/<target>/) cover what the writer does
// not produce (other producers' configs, odd names).
#include <moeq/checkpoint.hpp>
#include <moeq/expert_name_router.hpp>
#include <moeq/safetensors.hpp>
#include <moeq_writer/modelopt.hpp>
#include <moeq_writer/producers.hpp>
#include <moeq_writer/safetensors_writer.hpp>

#include "fuzz_work_dir.hpp"

#include <boost/json.hpp>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <functional>
#include <string>
#include <vector>

namespace fs = std::filesystem;
namespace json = boost::json;
using namespace moeq;

namespace {

std::string read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void put(const fs::path& dir, const std::string& name, const std::string& bytes) {
  fs::create_directories(dir);
  std::ofstream(dir / name, std::ios::binary) << bytes;
}

// The checkpoint's tensors split over two shards (even / odd positions) and the index.
struct Split {
  std::string shard[2];
  std::string index;
};

Split split(const fs::path& file, const fs::path& tmp) {
  auto st = SafetensorsFile::open(file);
  writer::SafetensorsWriter w[2];
  json::object map;
  int i = 0;
  for (const auto& [name, t] : st->tensors()) {
    const int k = i++ % 2;
    w[k].add(name, t.dtype, t.shape, std::vector<std::byte>(t.data, t.data + t.nbytes()));
    map[name] = k == 0 ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  Split s;
  for (int k = 0; k < 2; ++k) {
    const fs::path p = tmp / ("shard" + std::to_string(k));
    w[k].write(p);
    s.shard[k] = read(p);
  }
  s.index = json::serialize(json::object{{"metadata", json::object{{"total_size", 0}}}, {"weight_map", map}});
  return s;
}

// The file with its large tensors outside MoE layers (embeddings, lm_head) left out, so that
// a seed stays small.
std::string moe_tensors_only(const fs::path& file, const fs::path& tmp) {
  auto st = SafetensorsFile::open(file);
  writer::SafetensorsWriter w;
  for (const auto& [name, t] : st->tensors())
    if (route_tensor_name(name).role != TensorRole::kNotMoe || t.numel() <= 256)
      w.add(name, t.dtype, t.shape, std::vector<std::byte>(t.data, t.data + t.nbytes()));
  const fs::path p = tmp / "moe_only.safetensors";
  w.write(p);
  return read(p);
}

// fuzz_strict_load seeds (format in strict_load_case.hpp): option bytes, then config.json,
// model.safetensors and hf_quant_config.json of one tiny checkpoint (E=4, H=64, I=32, one
// layer: a few tens of KiB), once per option pair.
struct StrictLoadSeed {
  std::string tag;
  std::function<void(const fs::path&)> write;
  std::vector<std::pair<uint8_t, uint8_t>> options;
};

void put_strict_load_seeds(const fs::path& out, const fs::path& tmp) {
  writer::MoeSpec spec;
  spec.num_layers = 1;
  spec.num_experts = 4;
  spec.hidden = 64;
  spec.intermediate = 32;
  spec.top_k = 2;
  writer::MoeSpec granite = spec;
  granite.layout = writer::Layout::kGraniteFused;
  writer::ModelOptSpec mo;
  mo.num_layers = 1;
  mo.num_experts = 4;
  mo.hidden = 64;
  mo.intermediate = 32;
  mo.kv_scales = false;
  // byte 0: strict (0), non-strict (1), collect_errors (2), TP 2 rank 1 (0x0c), EP 2 rank 1
  // (0x30); byte 1: online scheme 1..4, apply tokens in bits 3-4.
  const std::vector<StrictLoadSeed> seeds = {
      {"ct_fp8_channel", [&](const fs::path& d) { writer::write_ct_fp8_channel(d, spec); },
       {{0x00, 0x00}, {0x0c, 0x18}, {0x30, 0x08}, {0x3c, 0x10}, {0x03, 0x00}}},
      {"ct_fp8_channel_granite", [&](const fs::path& d) { writer::write_ct_fp8_channel(d, granite); },
       {{0x00, 0x00}, {0x3c, 0x18}}},
      {"ct_fp8_block", [&](const fs::path& d) { writer::write_ct_fp8_block(d, spec, 32, 32); },
       {{0x00, 0x00}, {0x0c, 0x08}}},
      {"ct_int8_channel", [&](const fs::path& d) { writer::write_ct_int8_channel(d, spec); },
       {{0x00, 0x00}, {0x30, 0x10}}},
      {"unquantized", [&](const fs::path& d) { writer::write_unquantized(d, spec); },
       {{0x00, 0x00}, {0x00, 0x01}, {0x00, 0x0a}, {0x0c, 0x13}, {0x30, 0x1c}}},
      {"modelopt", [&](const fs::path& d) { writer::write_modelopt(d, mo); }, {{0x00, 0x00}, {0x3c, 0x18}}},
  };
  const std::string cut(fuzz::kPartCut);
  for (const StrictLoadSeed& s : seeds) {
    const fs::path dir = tmp / ("strict_load_" + s.tag);
    s.write(dir);
    std::string files = read(dir / "config.json") + cut + moe_tensors_only(dir / "model.safetensors", tmp);
    if (fs::exists(dir / "hf_quant_config.json")) files += cut + read(dir / "hf_quant_config.json");
    for (const auto& [b0, b1] : s.options) {
      char name[64];
      std::snprintf(name, sizeof(name), "seed_%s_%02x%02x", s.tag.c_str(), b0, b1);
      put(out / "fuzz_strict_load", name, std::string{static_cast<char>(b0), static_cast<char>(b1)} + files);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: fuzz_make_seeds OUT_DIR\n";
    return 2;
  }
  const fs::path out = argv[1];
  const fs::path tmp = fs::temp_directory_path() / ("moeq_seeds_" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  int n = 0;
  for (writer::Layout layout : {writer::Layout::kPerExpert, writer::Layout::kGraniteFused}) {
    writer::MoeSpec spec;
    spec.layout = layout;
    spec.num_layers = 1;
    spec.num_experts = 2;
    spec.hidden = 16;
    spec.intermediate = 8;
    spec.top_k = 1;
    const fs::path dir = tmp / writer::layout_name(layout);
    const writer::WrittenCheckpoint ck = writer::write_ct_fp8_channel(dir, spec);
    const std::string tag = std::to_string(n++);
    const std::string config = read(dir / "config.json");
    const Split s = split(dir / "model.safetensors", tmp);
    put(out / "fuzz_safetensors_header", "seed_" + tag, read(dir / "model.safetensors"));
    put(out / "fuzz_safetensors_header", "seed_shard_" + tag, s.shard[1]);
    put(out / "fuzz_shard_index", "seed_" + tag, s.index);
    put(out / "fuzz_quant_config", "seed_" + tag, config);
    const std::string cut(fuzz::kPartCut);
    put(out / "fuzz_checkpoint_dir", "seed_" + tag, config + cut + s.index + cut + s.shard[0] + cut + s.shard[1]);
    for (size_t i = 0; i < ck.tensor_names.size(); ++i)
      put(out / "fuzz_expert_name_router", "seed_" + tag + "_" + std::to_string(i), ck.tensor_names[i]);
  }
  for (size_t i = 0; i < naming_families().size(); ++i)
    put(out / "fuzz_expert_name_router", "seed_family_" + std::to_string(i), naming_families()[i].example);
  put_strict_load_seeds(out, tmp);
  fs::remove_all(tmp);
  std::cout << "seeds written under " << out.string() << "\n";
  return 0;
}
