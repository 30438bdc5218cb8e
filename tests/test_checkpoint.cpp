// Checkpoint directories: single file, shards with an index, the ways the index and the
// shards can disagree, config.json problems, and where the quantization config comes from.
#include <moeq/checkpoint.hpp>
#include <moeq/error.hpp>
#include <moeq_writer/safetensors_writer.hpp>

#include "support.hpp"

#include <doctest/doctest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

using namespace moeq;
namespace fs = std::filesystem;

namespace {

// A fresh checkpoint directory under the system temp dir, removed when the test ends.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = fs::temp_directory_path() /
            ("moeq_ckpt_" + std::to_string(::getpid()) + "_" + std::to_string(rd()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  fs::path path_;
};

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  REQUIRE(out.good());
}

// A shard holding small F32 tensors with the given names.
void write_shard(const fs::path& path, const std::vector<std::string>& names) {
  writer::SafetensorsWriter w;
  float v = 1.0f;
  for (const std::string& n : names) w.add_float(n, DType::F32, {2}, {v, v + 0.5f}), v += 1.0f;
  w.write(path);
}

std::string open_error(const fs::path& dir) {
  try {
    Checkpoint::open(dir);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

const char* kConfig = R"({"model_type": "mixtral", "num_local_experts": 4})";

// Two shards and an index that agrees with them.
void write_sharded(const TempDir& dir) {
  write_text(dir / "config.json", kConfig);
  write_shard(dir / "model-00001-of-00002.safetensors", {"a.weight", "b.weight"});
  write_shard(dir / "model-00002-of-00002.safetensors", {"c.weight"});
  write_text(dir / "model.safetensors.index.json", R"({
    "metadata": {"total_size": 24},
    "weight_map": {
      "a.weight": "model-00001-of-00002.safetensors",
      "b.weight": "model-00001-of-00002.safetensors",
      "c.weight": "model-00002-of-00002.safetensors"}})");
}

}  // namespace

TEST_CASE("single-file checkpoint opens with its config and tensors") {
  TempDir dir;
  write_text(dir / "config.json", kConfig);
  write_shard(dir / "model.safetensors", {"x.weight", "y.weight"});
  write_shard(dir / "stray.safetensors", {"x.weight"});  // ignored: model.safetensors wins
  Checkpoint ckpt = Checkpoint::open(dir.path());
  CHECK(ckpt.dir() == dir.path());
  CHECK(ckpt.config().at("model_type").as_string() == "mixtral");
  CHECK(ckpt.files().size() == 1);
  CHECK(ckpt.tensors().size() == 2);
  const TensorInfo* y = ckpt.find("y.weight");
  REQUIRE(y != nullptr);
  CHECK(y->file == dir / "model.safetensors");
  CHECK(load_as_float(y->data, y->dtype, 1) == 2.5f);
  CHECK(ckpt.find("z.weight") == nullptr);
  CHECK(ckpt.quant_config().json == "null");
  CHECK(ckpt.quant_config().source == "none");
}

TEST_CASE("sharded checkpoint with an index: every tensor found in its shard") {
  TempDir dir;
  write_sharded(dir);
  Checkpoint ckpt = Checkpoint::open(dir.path());
  CHECK(ckpt.files().size() == 2);
  CHECK(ckpt.tensors().size() == 3);
  CHECK(ckpt.find("c.weight")->file == dir / "model-00002-of-00002.safetensors");
  CHECK(ckpt.find("a.weight")->file == dir / "model-00001-of-00002.safetensors");
  // The shards handed their entries to the checkpoint (moved, not copied), data pointers and all.
  for (const auto& f : ckpt.files()) CHECK(f->tensors().empty());
  const TensorInfo* c = ckpt.find("c.weight");
  REQUIRE(c != nullptr);
  CHECK(c->name == "c.weight");
  CHECK(c->data != nullptr);
}

TEST_CASE("a copy of a checkpoint keeps its tensors, and their addresses, after the original is gone") {
  TempDir dir;
  write_sharded(dir);
  auto original = std::make_unique<Checkpoint>(Checkpoint::open(dir.path()));
  const TensorInfo* a = original->find("a.weight");
  REQUIRE(a != nullptr);
  const Checkpoint copy = *original;
  CHECK(copy.find("a.weight") == a);  // one map: the loader keeps pointers into it
  original.reset();
  REQUIRE(copy.tensors().size() == 3);
  CHECK(copy.find("a.weight") == a);
  CHECK(a->file == dir / "model-00001-of-00002.safetensors");
  CHECK(copy.find("c.weight")->file == dir / "model-00002-of-00002.safetensors");
  CHECK(copy.files().size() == 2);
}

TEST_CASE("without index or model.safetensors, all *.safetensors load in sorted order") {
  TempDir dir;
  write_text(dir / "config.json", kConfig);
  write_shard(dir / "b.safetensors", {"two"});
  write_shard(dir / "a.safetensors", {"one"});
  write_text(dir / "notes.txt", "not weights");
  Checkpoint ckpt = Checkpoint::open(dir.path());
  REQUIRE(ckpt.files().size() == 2);
  CHECK(ckpt.files()[0]->path() == dir / "a.safetensors");
  CHECK(ckpt.files()[1]->path() == dir / "b.safetensors");
  CHECK(ckpt.tensors().size() == 2);
}

TEST_CASE("index pointing at a missing shard names the index and the shard") {
  TempDir dir;
  write_sharded(dir);
  fs::remove(dir / "model-00002-of-00002.safetensors");
  std::string msg = open_error(dir.path());
  INFO(msg);
  CHECK(has(msg, "model.safetensors.index.json"));
  CHECK(has(msg, "model-00002-of-00002.safetensors"));
  CHECK(has(msg, "does not exist"));
}

TEST_CASE("tensor in a shard but not in the index is rejected") {
  TempDir dir;
  write_sharded(dir);
  write_shard(dir / "model-00002-of-00002.safetensors", {"c.weight", "extra.weight"});
  std::string msg = open_error(dir.path());
  INFO(msg);
  CHECK(has(msg, "tensor 'extra.weight'"));
  CHECK(has(msg, "model-00002-of-00002.safetensors"));
  CHECK(has(msg, "is not listed in index"));
  CHECK(has(msg, "model.safetensors.index.json"));
}

TEST_CASE("tensor in the index but not in the shard it names is rejected") {
  TempDir dir;
  write_sharded(dir);
  write_shard(dir / "model-00001-of-00002.safetensors", {"a.weight"});  // b.weight gone
  std::string msg = open_error(dir.path());
  INFO(msg);
  CHECK(has(msg, "tensor 'b.weight'"));
  CHECK(has(msg, "model-00001-of-00002.safetensors"));
  CHECK(has(msg, "model.safetensors.index.json"));
  CHECK(has(msg, "does not contain it"));
}

TEST_CASE("tensor in a different shard than the index says is rejected") {
  TempDir dir;
  write_sharded(dir);
  write_shard(dir / "model-00001-of-00002.safetensors", {"a.weight"});
  write_shard(dir / "model-00002-of-00002.safetensors", {"b.weight", "c.weight"});
  std::string msg = open_error(dir.path());
  INFO(msg);
  CHECK(has(msg, "tensor 'b.weight'"));
  CHECK(has(msg, "model-00001-of-00002.safetensors"));
}

TEST_CASE("tensor duplicated across shards names both files") {
  TempDir dir;
  write_sharded(dir);
  write_shard(dir / "model-00002-of-00002.safetensors", {"c.weight", "a.weight"});
  std::string msg = open_error(dir.path());
  INFO(msg);
  CHECK(has(msg, "tensor 'a.weight' appears in both"));
  CHECK(has(msg, "model-00001-of-00002.safetensors"));
  CHECK(has(msg, "model-00002-of-00002.safetensors"));
}

TEST_CASE("tensor duplicated across unindexed files names both files") {
  TempDir dir;
  write_text(dir / "config.json", kConfig);
  write_shard(dir / "a.safetensors", {"w"});
  write_shard(dir / "b.safetensors", {"w"});
  std::string msg = open_error(dir.path());
  INFO(msg);
  CHECK(has(msg, "tensor 'w' appears in both"));
  CHECK(has(msg, "a.safetensors"));
  CHECK(has(msg, "b.safetensors"));
}

TEST_CASE("index shard names may not leave the directory") {
  TempDir dir;
  write_text(dir / "config.json", kConfig);
  write_text(dir / "model.safetensors.index.json",
             R"({"weight_map": {"a.weight": "../elsewhere.safetensors"}})");
  std::string msg = open_error(dir.path());
  INFO(msg);
  CHECK(has(msg, "tensor 'a.weight'"));
  CHECK(has(msg, "../elsewhere.safetensors"));
  CHECK(has(msg, "plain file name"));
}

TEST_CASE("index without a weight_map object is rejected") {
  TempDir dir;
  write_text(dir / "config.json", kConfig);
  write_shard(dir / "model.safetensors", {"a"});
  write_text(dir / "model.safetensors.index.json", R"({"weight_map": ["a"]})");
  std::string msg = open_error(dir.path());
  INFO(msg);
  CHECK(has(msg, "\"weight_map\": expected an object, found array"));
  write_text(dir / "model.safetensors.index.json", R"({"metadata": {}})");
  CHECK(has(open_error(dir.path()), "missing \"weight_map\""));
}

TEST_CASE("missing checkpoint directory or config.json is named") {
  TempDir dir;
  std::string msg = open_error(dir / "nope");
  CHECK(has(msg, "nope"));
  CHECK(has(msg, "does not exist"));
  write_shard(dir / "model.safetensors", {"a"});
  msg = open_error(dir.path());
  INFO(msg);
  CHECK(has(msg, dir.path().string()));
  CHECK(has(msg, "has no config.json"));
}

TEST_CASE("config.json that is not a JSON object is rejected") {
  TempDir dir;
  write_shard(dir / "model.safetensors", {"a"});
  write_text(dir / "config.json", "[1, 2, 3]");
  std::string msg = open_error(dir.path());
  INFO(msg);
  CHECK(has(msg, "config.json"));
  CHECK(has(msg, "expected a JSON object, found array"));
  write_text(dir / "config.json", "{\"a\": ");
  CHECK(has(open_error(dir.path()), "invalid JSON"));
}

TEST_CASE("config.json with a duplicate key is rejected") {
  TempDir dir;
  write_shard(dir / "model.safetensors", {"a"});
  write_text(dir / "config.json", R"({"x": {"k": 1, "k": 2}})");
  CHECK(has(open_error(dir.path()), "duplicate key \"k\""));
}

TEST_CASE("directory without any safetensors is rejected") {
  TempDir dir;
  write_text(dir / "config.json", kConfig);
  std::string msg = open_error(dir.path());
  INFO(msg);
  CHECK(has(msg, "has no weights"));
}

TEST_CASE("quant config: hf_quant_config.json wins over config.json") {
  TempDir dir;
  write_text(dir / "config.json",
             R"({"quantization_config": {"quant_method": "compressed-tensors"}})");
  write_text(dir / "hf_quant_config.json", R"({"quantization": {"quant_algo": "FP8"}})");
  write_shard(dir / "model.safetensors", {"a"});
  Checkpoint ckpt = Checkpoint::open(dir.path());
  CHECK(ckpt.quant_config().source == "hf_quant_config.json");
  CHECK(ckpt.quant_config().json == R"({"quantization":{"quant_algo":"FP8"}})");
}

TEST_CASE("quant config: config.json quantization_config, then legacy compression_config") {
  TempDir dir;
  write_shard(dir / "model.safetensors", {"a"});
  write_text(dir / "config.json", R"({"quantization_config": {"quant_method": "fp8"},
                                      "compression_config": {"old": true}})");
  Checkpoint ckpt = Checkpoint::open(dir.path());
  CHECK(ckpt.quant_config().source == "config.json");
  CHECK(ckpt.quant_config().json == R"({"quant_method":"fp8"})");

  write_text(dir / "config.json", R"({"compression_config": {"format": "float-quantized"}})");
  Checkpoint legacy = Checkpoint::open(dir.path());
  CHECK(legacy.quant_config().source == "config.json");
  CHECK(legacy.quant_config().json == R"({"format":"float-quantized"})");
}

TEST_CASE("quant config: none gives \"null\" from source none") {
  TempDir dir;
  write_shard(dir / "model.safetensors", {"a"});
  write_text(dir / "config.json", R"({"quantization_config": null})");
  Checkpoint ckpt = Checkpoint::open(dir.path());
  CHECK(ckpt.quant_config().json == "null");
  CHECK(ckpt.quant_config().source == "none");
}

TEST_CASE("read_json_file names a missing file") {
  TempDir dir;
  CHECK_THROWS_WITH_AS(read_json_file(dir / "absent.json"),
                       doctest::Contains("absent.json"), Error);
}

namespace {

// What the strict reader (parse_json_strict, then weight_map_of) and the one-pass reader
// Checkpoint::open uses (parse_weight_map) make of one index text: the map, or the message.
struct IndexReading {
  std::map<std::string, std::string> map;
  std::string error;
};

IndexReading strict_reading(const std::string& text) {
  IndexReading r;
  try {
    r.map = weight_map_of(parse_json_strict(text, "'idx.json'"), "idx.json");
  } catch (const Error& e) {
    r.error = e.what();
  }
  return r;
}

IndexReading fast_reading(const std::string& text) {
  IndexReading r;
  try {
    r.map = parse_weight_map(text, "idx.json");
  } catch (const Error& e) {
    r.error = e.what();
  }
  return r;
}

}  // namespace

TEST_CASE("index: the one-pass reader gives the strict reader's map, or its message, for every text") {
  const std::vector<std::string> cases = {
      R"({"metadata": {"total_size": 123}, "weight_map": {"b.w": "s2.safetensors", "a.w": "s1.safetensors"}})",
      R"({"weight_map": {}})",
      R"({"weight_map": {"a\u002ew": "s\"1.safetensors"}, "metadata": {"x": [1, {"y": null}], "z": true}})",
      R"({"weight_map": {"a.w": "s1.safetensors", "a.w": "s1.safetensors"}})",                  // repeated tensor
      R"({"weight_map": {"a.w": "s1.safetensors"}, "weight_map": {"b.w": "s1.safetensors"}})",  // repeated map
      R"({"metadata": {"k": 1, "k": 2}, "weight_map": {"a.w": "s1.safetensors"}})",             // repeat elsewhere
      R"({"weight_map": {"a.w": 3}})",
      R"({"weight_map": {"a.w": null}})",
      R"({"weight_map": {"a.w": {"f": "s1.safetensors"}}})",
      R"({"weight_map": {"a.w": ["s1.safetensors"]}})",
      R"({"weight_map": ["a.w"]})",
      R"({"weight_map": "s1.safetensors"})",
      R"({"weight_map": 1})",
      R"({"metadata": {}})",
      R"(["weight_map"])",
      R"("weight_map")",
      R"(7)",
      R"({"weight_map": {"a.w": "s1.safetensors"})",  // cut short
      R"({"weight_map": {"a.w": "s1.safetensors"}} trailing)",
      R"({"weight_map": {"z.w": "../up.safetensors", "a.w": "sub/x.safetensors"}})",  // the first in file order
      R"({"weight_map": {"a.w": "", "b.w": "."}})",
      R"({"weight_map": {"": "b//escape.ensors", "c.weight": "."}})",  // the empty name is the first (fuzzing found it)
      R"({"weight_map": {"": "s1.safetensors", "c.weight": "s2.safetensors"}})",
      R"({"weight_map": {"a.w": "s1.safetensors"}, "nested": {"weight_map": 5}})",
      "",
  };
  for (const std::string& text : cases) {
    CAPTURE(text);
    const IndexReading s = strict_reading(text), f = fast_reading(text);
    CHECK(f.error == s.error);
    CHECK(f.map == s.map);
  }
  // Mutations of a well-formed index, seeded: a byte replaced, dropped or repeated.
  std::string base = R"({"metadata": {"total_size": 99}, "weight_map": {)";
  for (int i = 0; i < 12; ++i)
    base += std::string(i ? ", " : "") + "\"model.layers." + std::to_string(i % 5) + ".mlp.experts." + std::to_string(i) +
            ".w1.weight\": \"model-0000" + std::to_string(i % 3) + ".safetensors\"";
  base += "}}";
  REQUIRE(fast_reading(base).map.size() == 12);
  std::mt19937 rng(20261206);
  const std::string alphabet = "{}[]\":,.0/ \\an";
  int differed = 0, failed = 0;
  for (int n = 0; n < 4000; ++n) {
    std::string text = base;
    for (int k = 1 + static_cast<int>(rng() % 3); k > 0; --k) {
      const std::size_t at = rng() % text.size();
      switch (rng() % 3) {
        case 0: text[at] = alphabet[rng() % alphabet.size()]; break;
        case 1: text.erase(at, 1); break;
        default: text.insert(at, 1, text[at]); break;
      }
    }
    const IndexReading s = strict_reading(text), f = fast_reading(text);
    failed += !s.error.empty();
    if (f.error != s.error || f.map != s.map) {
      ++differed;
      CAPTURE(text);
      CHECK(f.error == s.error);
    }
  }
  CHECK(differed == 0);
  CHECK(failed > 100);  // the mutations reach the strict reader's errors, not only maps
}

TEST_CASE("parse_json_strict: duplicate keys are found at any depth and size, the same key in sibling objects is not one") {
  auto error_of = [](const std::string& text) {
    return moeq::test::error_of([&] { moeq::parse_json_strict(text, "t.json"); });
  };
  // Siblings at one depth share the finder's memory: their keys must not meet.
  std::string siblings = "{";
  for (int i = 0; i < 40; ++i)
    siblings += std::string(i ? "," : "") + "\"t" + std::to_string(i) + "\":{\"dtype\":1,\"shape\":[{\"a\":1},{\"a\":2}]}";
  CHECK_NOTHROW(moeq::parse_json_strict(siblings + "}", "t.json"));
  // A repeat past the first sixteen keys of an object (the finder's list turns into a set).
  CHECK(error_of(siblings + ",\"t17\":{}}").find("t.json: duplicate key \"t17\"") != std::string::npos);
  // A repeat among the sixteen, and inside a nested object after many siblings.
  CHECK(error_of(siblings + ",\"t3\":{}}").find("duplicate key \"t3\"") != std::string::npos);
  CHECK(error_of(siblings + ",\"u\":{\"x\":[{\"b\":1,\"b\":2}]}}").find("duplicate key \"b\"") != std::string::npos);
  // The first repeat in the text is the one named.
  CHECK(error_of("{\"a\":{\"c\":1,\"c\":2},\"a\":3}").find("duplicate key \"c\"") != std::string::npos);
  // The arena overload gives the same values.
  boost::json::monotonic_resource arena;
  const boost::json::value v = moeq::parse_json_strict(siblings + "}", "t.json", &arena);
  CHECK(v.as_object().size() == 40);
  CHECK(v.at("t39").at("shape").as_array().size() == 2);
}
