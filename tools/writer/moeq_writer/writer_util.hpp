// Small pieces every producer emulator uses.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace moeq::writer {

// Seeded normal values rounded to bf16 (the masters are bf16 models, like the real ones).
std::vector<float> randn_bf16(std::mt19937_64& rng, size_t n, float stddev);
std::vector<std::byte> as_bytes(const std::vector<uint8_t>& v);
// Writes a text file; throws moeq::Error naming it.
void write_text_file(const std::filesystem::path& path, const std::string& text);

}  // namespace moeq::writer
