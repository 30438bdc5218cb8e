#include <moeq/dtype.hpp>
#include <moeq/error.hpp>
#include <moeq_writer/writer_util.hpp>

#include <algorithm>
#include <fstream>

namespace moeq::writer {

std::vector<float> randn_bf16(std::mt19937_64& rng, size_t n, float stddev) {
  std::normal_distribution<float> d(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = bf16_to_float(float_to_bf16(d(rng)));
  return v;
}

std::vector<std::byte> as_bytes(const std::vector<uint8_t>& v) {
  std::vector<std::byte> b(v.size());
  std::transform(v.begin(), v.end(), b.begin(), [](uint8_t x) { return std::byte{x}; });
  return b;
}

void write_text_file(const std::filesystem::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary);
  f << s;
  if (!f) fail("cannot write " + p.string());
}

}  // namespace moeq::writer
