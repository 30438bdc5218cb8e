// The plugin allow-list file: reading, checking a plugin against it, writing it.
#include <moeq/error.hpp>
#include <moeq/plugin_manifest.hpp>
#include <moeq/sha256.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace fs = std::filesystem;

namespace moeq {
namespace {

constexpr std::size_t kMaxManifestBytes = 1 << 20;  // thousands of plugins fit in far less

fs::path canonical_or_normal(const fs::path& p) {
  std::error_code ec;
  fs::path c = fs::weakly_canonical(p, ec);
  return ec ? fs::absolute(p).lexically_normal() : c;
}

bool is_hex_digest(std::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

}  // namespace

PluginManifest PluginManifest::read(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) fail(MOEQ_STATUS_CODE_NOT_FOUND, "plugin manifest '" + file.string() + "' cannot be opened");
  std::string text(kMaxManifestBytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<std::size_t>(in.gcount()));
  if (text.size() > kMaxManifestBytes)
    fail("plugin manifest '" + file.string() + "' is larger than the limit of " +
         std::to_string(kMaxManifestBytes) + " bytes");

  PluginManifest m;
  m.file_ = file;
  const fs::path base = canonical_or_normal(file).parent_path();
  std::istringstream lines(text);
  std::string line;
  for (int number = 1; std::getline(lines, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    auto bad = [&](const std::string& what) {
      fail("plugin manifest '" + file.string() + "' line " + std::to_string(number) + ": " + what +
           " (expected \"<64 lower-case hex digits>  <plugin path>\")");
    };
    // sha256sum writes two spaces, or " *" for binary mode; accept both.
    if (line.size() < 67 || line[64] != ' ' || (line[65] != ' ' && line[65] != '*')) bad("malformed entry");
    const std::string digest = line.substr(0, 64);
    if (!is_hex_digest(digest)) bad("'" + digest + "' is not a SHA-256 digest");
    const fs::path listed = line.substr(66);
    const fs::path key = canonical_or_normal(listed.is_absolute() ? listed : base / listed);
    auto [it, fresh] = m.digests_.emplace(key, digest);
    if (!fresh && it->second != digest) bad("'" + listed.string() + "' is listed twice with different digests");
  }
  return m;
}

std::string PluginManifest::check(const fs::path& plugin, const std::string& digest_hex) const {
  const fs::path key = canonical_or_normal(plugin);
  auto it = digests_.find(key);
  if (it == digests_.end())
    return "not listed in plugin manifest " + file_.string() + " (pin it with `moeq plugins --pin`)";
  if (it->second != digest_hex)
    return "SHA-256 " + digest_hex + " differs from " + it->second + " pinned in plugin manifest " +
           file_.string() + " (the file changed since it was pinned)";
  return {};
}

void write_plugin_manifest(const fs::path& file, const std::vector<std::pair<fs::path, std::string>>& entries) {
  const fs::path dir = canonical_or_normal(file).parent_path();
  std::ostringstream out;
  out << "# moeq plugin manifest: SHA-256 of every plugin allowed to load (sha256sum format).\n"
      << "# Written by `moeq plugins --pin`; the registry refuses a plugin that is not listed here\n"
      << "# or whose bytes changed.\n";
  for (const auto& [plugin, digest] : entries) {
    const fs::path p = canonical_or_normal(plugin);
    if (p.string().find('\n') != std::string::npos)
      fail("cannot pin '" + p.string() + "': a path with a line break has no manifest spelling");
    out << digest << "  " << (p.parent_path() == dir ? p.filename().string() : p.string()) << "\n";
  }
  const std::string text = out.str();
  // NOTE: written under a temporary name and renamed: a reader never sees half a manifest,
  // and a failure leaves the old one in place.
  const fs::path tmp = file.string() + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("cannot write plugin manifest '" + tmp.string() + "': " + std::strerror(errno));
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string why = std::strerror(errno);
      ::close(fd);
      ::unlink(tmp.c_str());
      fail("cannot write plugin manifest '" + tmp.string() + "': " + why);
    }
    done += static_cast<std::size_t>(n);
  }
  ::fchmod(fd, 0644);  // the umask may have taken bits the registry does not need anyway
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    fail("cannot write plugin manifest '" + tmp.string() + "': " + std::strerror(errno));
  }
  if (::rename(tmp.c_str(), file.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    ::unlink(tmp.c_str());
    fail("cannot rename plugin manifest into place at '" + file.string() + "': " + why);
  }
}

std::string sha256_file_hex(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) fail("cannot read '" + file.string() + "' to hash it");
  Sha256 h;
  std::string buf(1 << 16, '\0');
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    h.update(std::string_view(buf.data(), static_cast<std::size_t>(in.gcount())));
  }
  if (in.bad()) fail("cannot read '" + file.string() + "' to hash it");
  return to_hex(h.finish());
}

}  // namespace moeq
