// A private directory per fuzzer process (in /dev/shm when there is one), removed at exit, and
// the files of an input cut into parts: the targets that fuzz whole checkpoint directories.
#pragma once
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <string_view>

namespace moeq::fuzz {

// One directory per process; later calls return the same path, whatever their tag.
inline const std::filesystem::path& work_dir(const char* tag) {
  namespace fs = std::filesystem;
  static const fs::path dir = [tag] {
    const fs::path base = fs::exists("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path();
    fs::path d = base / ("moeq_fuzz_" + std::string(tag) + "_" + std::to_string(::getpid()));
    fs::create_directories(d);
    return d;
  }();
  // NOTE: registered once `dir` is constructed, so that it runs before `dir` is destroyed
  // (registered inside the initializer, it ran after and removed nothing).
  static const int cleanup = std::atexit([] {
    std::error_code ec;
    fs::remove_all(dir, ec);
  });
  (void)cleanup;
  return dir;
}

inline constexpr std::string_view kPartCut = "\n#moeq-part#\n";

// Cuts `input` at each kPartCut and writes part i to dir / names[i]; an empty or absent part
// removes its file; whatever follows the last name's part is ignored.
inline void write_parts(std::string_view input, const std::filesystem::path& dir,
                                    std::span<const char* const> names) {
  for (const char* name : names) {
    const size_t cut = input.find(kPartCut);
    const std::string_view part = input.substr(0, cut);
    input = cut == std::string_view::npos ? std::string_view() : input.substr(cut + kPartCut.size());
    const std::filesystem::path path = dir / name;
    std::filesystem::remove(path);
    if (part.empty()) continue;
    std::ofstream(path, std::ios::binary).write(part.data(), static_cast<std::streamsize>(part.size()));
  }
}

}  // namespace moeq::fuzz
