// A safetensors file mapped read-only and validated: header length, JSON, dtypes,
// shape x dtype size = byte range, ranges inside the file and not overlapping.
#pragma once
#include <moeq/dtype.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace moeq {

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte range relative to the start of the data section
  uint64_t end = 0;
  const std::byte* data = nullptr;  // points into the mapping (read-only)
  std::filesystem::path file;
  int64_t numel() const;
  std::size_t nbytes() const { return static_cast<std::size_t>(end - begin); }
};

// Limits that keep a hostile checkpoint from making the reader allocate or map without bound.
// The defaults hold the largest public MoE checkpoints with a wide margin; an error that a
// limit stops names the limit. Embedders with larger checkpoints pass their own.
constexpr uint64_t kMaxSafetensorsHeaderBytes = 100ull << 20;  // 100 MiB
constexpr std::size_t kMaxTensorsPerFile = 1'000'000;
constexpr int kMaxTensorRank = 8;

struct ReaderLimits {
  uint64_t max_header_bytes = kMaxSafetensorsHeaderBytes;  // one file's JSON header
  std::size_t max_tensors_per_file = kMaxTensorsPerFile;
  std::size_t max_tensors = 4'000'000;       // across every file of a checkpoint
  std::size_t max_files = 100'000;           // safetensors files (shards) of a checkpoint
  int max_rank = kMaxTensorRank;
  uint64_t max_json_file_bytes = 64ull << 20;  // config.json, the index, hf_quant_config.json
};

// A validated safetensors header; every TensorInfo::data points into the bytes it came from.
struct SafetensorsHeader {
  std::map<std::string, TensorInfo> tensors;
  std::map<std::string, std::string> metadata;
};

// Validates a whole safetensors image held in memory exactly as SafetensorsFile::open
// validates a file (the fuzzers' entry point); `path` only labels the messages.
SafetensorsHeader parse_safetensors(std::span<const std::byte> bytes, const std::filesystem::path& path,
                                    const ReaderLimits& limits = {});

class MappedFile;  // RAII mmap

class SafetensorsFile {
 public:
  // Throws moeq::Error naming the file and the problem.
  static std::shared_ptr<SafetensorsFile> open(const std::filesystem::path& path,
                                               const ReaderLimits& limits = {});
  const std::filesystem::path& path() const { return path_; }
  // The file's tensors by name. A file opened by Checkpoint::open hands them to the checkpoint
  // (Checkpoint::tensors() holds every shard's, moved, not copied); its own map is then empty.
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  std::size_t file_size() const;
  // Throws moeq::Error naming the file when it changed since it was opened: truncated (reads
  // past the new end see zeros, never a signal) or written (size or modification time). The
  // loader calls it after reading the tensors of a load.
  void check_unchanged() const;
  ~SafetensorsFile();

 private:
  friend class Checkpoint;
  SafetensorsFile() = default;
  std::filesystem::path path_;
  std::unique_ptr<MappedFile> map_;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace moeq
