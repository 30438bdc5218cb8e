// Writes real safetensors files (header JSON + aligned data) for fixtures and the demo.
#pragma once
#include <moeq/dtype.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace moeq::writer {

// One tensor of a safetensors header; data_offsets follow the order tensors are given in.
struct HeaderTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t bytes = 0;
};
// What precedes the data section: the u64 little-endian header length, then the JSON header
// (`__metadata__` first when there is any) padded with spaces to a multiple of 8 bytes.
std::string safetensors_prefix(const std::vector<HeaderTensor>& tensors,
                               const std::map<std::string, std::string>& metadata);

class SafetensorsWriter {
 public:
  // Raw little-endian bytes; size must equal numel(shape) * dtype_size(dtype).
  void add(const std::string& name, DType dtype, std::vector<int64_t> shape,
           std::vector<std::byte> bytes);
  // Convenience: encode float values into dtype (BF16/F16/F32/F8_E4M3 with RNE; ints round).
  void add_float(const std::string& name, DType dtype, std::vector<int64_t> shape,
                 const std::vector<float>& values);
  void set_metadata(const std::string& key, const std::string& value);
  // Tensors are laid out in name order, 8-byte aligned header as the format requires.
  void write(const std::filesystem::path& path) const;
  std::size_t size() const { return tensors_.size(); }
  std::vector<std::string> names() const;

 private:
  struct Entry {
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<std::byte> bytes;
  };
  std::map<std::string, Entry> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace moeq::writer
