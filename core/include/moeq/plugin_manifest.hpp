// The plugin allow-list: which plugin files may load, by SHA-256 of their bytes. `moeq plugins
// --pin` writes it; the registry enforces it wherever one applies (registry.hpp, PluginTrust).
// One line per file as sha256sum prints it, "<64 hex digits>  <path>", so that
// `sha256sum -c plugins.lock` checks it too; '#' starts a comment line. A relative path is
// relative to the manifest's own directory.
#pragma once
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace moeq {

// The manifest file name the registry looks for in a plugin directory.
inline constexpr const char* kPluginManifestName = "plugins.lock";

class PluginManifest {
 public:
  // Throws moeq::Error naming the file and the line of a malformed entry.
  static PluginManifest read(const std::filesystem::path& file);

  const std::filesystem::path& file() const { return file_; }
  std::size_t size() const { return digests_.size(); }
  // Empty when `plugin` (any spelling; compared canonically) is listed with `digest_hex`,
  // else the one-line refusal reason.
  std::string check(const std::filesystem::path& plugin, const std::string& digest_hex) const;
  // Every entry: canonical plugin path -> lower-case hex digest.
  const std::map<std::filesystem::path, std::string>& entries() const { return digests_; }

 private:
  std::filesystem::path file_;
  std::map<std::filesystem::path, std::string> digests_;  // canonical path -> lower-case hex
};

// Writes the manifest atomically (a temporary file renamed into place, mode 0644). Entries
// are (plugin file, digest hex); a plugin inside the manifest's directory is written by its
// file name, any other by its absolute path.
void write_plugin_manifest(const std::filesystem::path& file,
                           const std::vector<std::pair<std::filesystem::path, std::string>>& entries);

// SHA-256 of a file's bytes as 64 lower-case hex digits; throws moeq::Error naming the file.
std::string sha256_file_hex(const std::filesystem::path& file);

}  // namespace moeq
