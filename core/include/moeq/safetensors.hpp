// A safetensors file mapped read-only and validated: header length, JSON, dtypes,
// shape x dtype size = byte range, ranges inside the file and not overlapping.
#pragma once
#include <moeq/dtype.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
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

class MappedFile;  // RAII mmap

class SafetensorsFile {
 public:
  // Throws moeq::Error naming the file and the problem.
  static std::shared_ptr<SafetensorsFile> open(const std::filesystem::path& path);
  const std::filesystem::path& path() const { return path_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  std::size_t file_size() const;
  ~SafetensorsFile();

 private:
  SafetensorsFile() = default;
  std::filesystem::path path_;
  std::unique_ptr<MappedFile> map_;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Limits that keep a hostile file from making the reader allocate without bound.
constexpr uint64_t kMaxSafetensorsHeaderBytes = 100ull << 20;  // 100 MiB
constexpr std::size_t kMaxTensorsPerFile = 1'000'000;
constexpr int kMaxTensorRank = 8;

}  // namespace moeq
