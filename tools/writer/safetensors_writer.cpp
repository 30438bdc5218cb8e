// Writes the real safetensors format: u64 little-endian header length, a JSON header
// (optional __metadata__, then dtype/shape/data_offsets per tensor) padded with spaces to a
// multiple of 8, then the tensors' bytes packed in name order.
#include <moeq_writer/safetensors_writer.hpp>

#include <moeq/error.hpp>

#include <boost/json.hpp>

#include <fstream>
#include <string>

namespace moeq::writer {

namespace {

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

// Element count of a shape; a negative dimension names the tensor.
uint64_t checked_numel(const std::string& name, const std::vector<int64_t>& shape) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0)
      fail("SafetensorsWriter: tensor '" + name + "': negative dimension in shape " +
           shape_text(shape));
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n))
      fail("SafetensorsWriter: tensor '" + name + "': shape " + shape_text(shape) +
           " overflows 64 bits");
  }
  return n;
}

void put_u64_le(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

}  // namespace

void SafetensorsWriter::add(const std::string& name, DType dtype, std::vector<int64_t> shape,
                            std::vector<std::byte> bytes) {
  if (name.empty() || name == "__metadata__")
    fail("SafetensorsWriter: invalid tensor name '" + name + "'");
  if (tensors_.contains(name))
    fail("SafetensorsWriter: tensor '" + name + "' was already added");
  uint64_t expected = checked_numel(name, shape) * dtype_size(dtype);
  if (bytes.size() != expected)
    fail("SafetensorsWriter: tensor '" + name + "': expected " + std::to_string(expected) +
         " bytes for shape " + shape_text(shape) + " " + dtype_name(dtype) + ", found " +
         std::to_string(bytes.size()));
  tensors_.emplace(name, Entry{dtype, std::move(shape), std::move(bytes)});
}

void SafetensorsWriter::add_float(const std::string& name, DType dtype,
                                  std::vector<int64_t> shape, const std::vector<float>& values) {
  uint64_t numel = checked_numel(name, shape);
  if (values.size() != numel)
    fail("SafetensorsWriter: tensor '" + name + "': expected " + std::to_string(numel) +
         " values for shape " + shape_text(shape) + ", found " + std::to_string(values.size()));
  std::vector<std::byte> bytes(numel * dtype_size(dtype));
  for (std::size_t i = 0; i < values.size(); ++i)
    store_from_float(bytes.data(), dtype, i, values[i]);
  add(name, dtype, std::move(shape), std::move(bytes));
}

void SafetensorsWriter::set_metadata(const std::string& key, const std::string& value) {
  metadata_[key] = value;
}

std::string safetensors_prefix(const std::vector<HeaderTensor>& tensors,
                               const std::map<std::string, std::string>& metadata) {
  boost::json::object header;
  if (!metadata.empty()) {
    boost::json::object meta;
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  uint64_t offset = 0;
  for (const HeaderTensor& t : tensors) {
    const uint64_t end = offset + t.bytes;
    header[t.name] = boost::json::object{{"dtype", dtype_name(t.dtype)},
                                         {"shape", boost::json::array(t.shape.begin(), t.shape.end())},
                                         {"data_offsets", boost::json::array{offset, end}}};
    offset = end;
  }
  std::string text = boost::json::serialize(header);
  // The data section must start 8-byte aligned; spaces are the padding the format allows.
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string prefix;
  put_u64_le(prefix, text.size());
  return prefix + text;
}

void SafetensorsWriter::write(const std::filesystem::path& path) const {
  std::vector<HeaderTensor> tensors;
  for (const auto& [name, entry] : tensors_) tensors.push_back({name, entry.dtype, entry.shape, entry.bytes.size()});
  const std::string prefix = safetensors_prefix(tensors, metadata_);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) fail("SafetensorsWriter: cannot create '" + path.string() + "'");
  out.write(prefix.data(), static_cast<std::streamsize>(prefix.size()));
  for (const auto& [name, entry] : tensors_)
    out.write(reinterpret_cast<const char*>(entry.bytes.data()),
              static_cast<std::streamsize>(entry.bytes.size()));
  out.close();
  if (!out) fail("SafetensorsWriter: failed writing '" + path.string() + "'");
}

std::vector<std::string> SafetensorsWriter::names() const {
  std::vector<std::string> out;
  for (const auto& [name, entry] : tensors_) out.push_back(name);
  return out;
}

}  // namespace moeq::writer
