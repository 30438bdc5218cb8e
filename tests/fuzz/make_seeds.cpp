// Writes seed inputs for every fuzz target from checkpoints made by the project's own writer:
//   fuzz_make_seeds OUT_DIR   ->  OUT_DIR/<target>/seed_*
// The committed hand-written seeds (tests/fuzz/corpus/<target>/) cover what the writer does
// not produce (other producers' configs, odd names).
#include <moeq/checkpoint.hpp>
#include <moeq/expert_name_router.hpp>
#include <moeq/safetensors.hpp>
#include <moeq_writer/producers.hpp>
#include <moeq_writer/safetensors_writer.hpp>

#include <boost/json.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>

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
    const std::string cut = "\n#moeq-part#\n";
    put(out / "fuzz_checkpoint_dir", "seed_" + tag, config + cut + s.index + cut + s.shard[0] + cut + s.shard[1]);
    for (size_t i = 0; i < ck.tensor_names.size(); ++i)
      put(out / "fuzz_expert_name_router", "seed_" + tag + "_" + std::to_string(i), ck.tensor_names[i]);
  }
  for (size_t i = 0; i < naming_families().size(); ++i)
    put(out / "fuzz_expert_name_router", "seed_family_" + std::to_string(i), naming_families()[i].example);
  fs::remove_all(tmp);
  std::cout << "seeds written under " << out.string() << "\n";
  return 0;
}
