// A Hugging Face style checkpoint directory: config.json, optional hf_quant_config.json,
// model.safetensors or shards listed by model.safetensors.index.json.
#pragma once
#include <moeq/safetensors.hpp>

#include <boost/json.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace moeq {

struct QuantConfigSource {
  std::string json;    // serialized quantization config, "null" when none
  std::string source;  // "hf_quant_config.json", "config.json" or "none"
};

class Checkpoint {
 public:
  // Opens and validates everything up front; throws moeq::Error naming the file. A symlink
  // loop, a FIFO or anything else that is not a regular file where one is expected is an
  // Error too, as is going past one of `limits`.
  static Checkpoint open(const std::filesystem::path& dir, const ReaderLimits& limits = {});

  const std::filesystem::path& dir() const { return dir_; }
  const boost::json::object& config() const { return config_; }
  // hf_quant_config.json wins over config.json's quantization_config (or legacy
  // compression_config).
  const QuantConfigSource& quant_config() const { return quant_; }
  // All tensors of all files, by name (sorted). Copies of a Checkpoint share this map (it never
  // changes after open), so a copy costs no walk of the tensors and their pointers stay valid
  // while any copy lives.
  const std::map<std::string, TensorInfo>& tensors() const { return *tensors_; }
  const TensorInfo* find(const std::string& name) const;
  const std::vector<std::shared_ptr<SafetensorsFile>>& files() const { return files_; }
  // .safetensors files in the directory that are not read: with an index, those it does not
  // name; beside model.safetensors, every other (as transformers does, e.g. a Mistral
  // consolidated.safetensors). Sorted.
  const std::vector<std::filesystem::path>& unread_files() const { return unread_; }

 private:
  std::filesystem::path dir_;
  boost::json::object config_;
  QuantConfigSource quant_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::shared_ptr<const std::map<std::string, TensorInfo>> tensors_ =
      std::make_shared<const std::map<std::string, TensorInfo>>();
  std::vector<std::filesystem::path> unread_;
};

// Read a JSON file of at most `max_bytes`; throws naming the file and the parse error.
boost::json::value read_json_file(const std::filesystem::path& path,
                                  uint64_t max_bytes = ReaderLimits{}.max_json_file_bytes);
// Parse JSON text strictly: a syntax error or a duplicate key in any object throws,
// naming `source` (a file, or "header of FILE"). The value's memory comes from `storage`
// (default: the heap; a monotonic resource that the caller keeps alive while it reads the
// value makes one arena instead of an allocation a value).
boost::json::value parse_json_strict(std::string_view text, const std::string& source,
                                     boost::json::storage_ptr storage = {});

// The parts of Checkpoint::open that take no file system, for the fuzzers and tools:
// which quantization config applies (hf_quant_config.json, when given, wins over config.json's
// quantization_config, then its legacy compression_config) ...
QuantConfigSource select_quant_config(const boost::json::object& config,
                                      const boost::json::object* hf_quant_config);
// ... and the weight_map of a parsed model.safetensors.index.json (tensor -> shard file name,
// every name a plain file inside the directory); `index` only labels the messages.
std::map<std::string, std::string> weight_map_of(const boost::json::value& index_root,
                                                 const std::filesystem::path& index,
                                                 const ReaderLimits& limits = {});
// ... the same from the index's text, as Checkpoint::open reads it: one pass that builds the
// map for a well-formed index, else the strict parse and weight_map_of, whose error it throws.
// Either way the map, or the message, is what weight_map_of(parse_json_strict(text)) gives.
std::map<std::string, std::string> parse_weight_map(std::string_view text, const std::filesystem::path& index,
                                                    const ReaderLimits& limits = {});

}  // namespace moeq
