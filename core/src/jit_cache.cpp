// The on-disk JIT cache: atomic publication, validation on read.
#include <moeq/file_trust.hpp>
#include <moeq/jit_cache.hpp>
#include <moeq/jit_key.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <random>

namespace moeq::jit {
namespace {

constexpr uint8_t kMagic[8] = {'M', 'O', 'E', 'Q', 'J', 'I', 'T', '\0'};
// An entry larger than this is damage, not a CUBIN.
constexpr uint64_t kMaxPayload = uint64_t{1} << 30;
// Temp files older than this were left by a writer that died; anyone may remove them.
constexpr auto kStaleTemp = std::chrono::hours(1);

void put_u32(std::vector<uint8_t>& b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void put_u64(std::vector<uint8_t>& b, uint64_t v) {
  for (int i = 0; i < 8; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
uint64_t get_le(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= uint64_t{p[i]} << (8 * i);
  return v;
}

std::string errno_text(const std::string& what) { return what + ": " + std::strerror(errno); }

bool write_all(int fd, const uint8_t* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

std::string temp_name(const std::string& key_hex) {
  static std::atomic<uint64_t> counter{0};
  thread_local std::mt19937_64 rng{std::random_device{}() ^
                                   static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count())};
  return ".tmp." + key_hex.substr(0, 16) + "." + std::to_string(::getpid()) + "." +
         std::to_string(counter.fetch_add(1)) + "." + std::to_string(rng() & 0xffffffff);
}

void remove_stale_temps(const std::filesystem::path& dir) {
  std::error_code ec;
  const auto now = std::filesystem::file_time_type::clock::now();
  for (auto it = std::filesystem::directory_iterator(dir, ec); !ec && it != std::filesystem::directory_iterator();
       it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.rfind(".tmp.", 0) != 0) continue;
    std::error_code ec2;
    const auto t = it->last_write_time(ec2);
    if (!ec2 && now - t > kStaleTemp) std::filesystem::remove(it->path(), ec2);
  }
}

}  // namespace

std::vector<uint8_t> encode_entry(const Digest& key, std::span<const uint8_t> payload) {
  std::vector<uint8_t> b;
  b.reserve(kEntryHeaderBytes + payload.size());
  b.insert(b.end(), std::begin(kMagic), std::end(kMagic));
  put_u32(b, kEntryFormat);
  put_u32(b, static_cast<uint32_t>(kEntryHeaderBytes));
  b.insert(b.end(), key.begin(), key.end());
  put_u64(b, payload.size());
  const Digest sum = digest(payload);
  b.insert(b.end(), sum.begin(), sum.end());
  b.insert(b.end(), payload.begin(), payload.end());
  return b;
}

CacheRead decode_entry(const Digest& key, std::span<const uint8_t> bytes) {
  CacheRead r;
  r.state = EntryState::corrupt;
  if (bytes.size() < kEntryHeaderBytes) {
    r.why = "truncated header: " + std::to_string(bytes.size()) + " bytes";
    return r;
  }
  const uint8_t* p = bytes.data();
  if (std::memcmp(p, kMagic, sizeof(kMagic)) != 0) {
    r.why = "bad magic";
    return r;
  }
  const uint64_t format = get_le(p + 8, 4), header = get_le(p + 12, 4);
  if (format != kEntryFormat || header != kEntryHeaderBytes) {
    r.why = "entry format " + std::to_string(format) + " (header " + std::to_string(header) + " bytes), expected " +
            std::to_string(kEntryFormat);
    return r;
  }
  if (std::memcmp(p + 16, key.data(), key.size()) != 0) {
    r.why = "holds another key";
    return r;
  }
  const uint64_t size = get_le(p + 32, 8);
  if (size > kMaxPayload || bytes.size() - kEntryHeaderBytes != size) {
    r.why = "payload is " + std::to_string(bytes.size() - kEntryHeaderBytes) + " bytes, header says " +
            std::to_string(size);
    return r;
  }
  const std::span<const uint8_t> payload = bytes.subspan(kEntryHeaderBytes);
  const Digest sum = digest(payload);
  if (std::memcmp(sum.data(), p + 40, sum.size()) != 0) {
    r.why = "payload checksum mismatch";
    return r;
  }
  r.state = EntryState::hit;
  r.payload.assign(payload.begin(), payload.end());
  return r;
}

JitCache::JitCache(std::filesystem::path root) : JitCache(std::move(root), static_cast<uint32_t>(::geteuid())) {}

JitCache::JitCache(std::filesystem::path root, uint32_t owner_uid) : root_(std::move(root)), owner_uid_(owner_uid) {}

std::string JitCache::trust_problem() const {
  return trust::directory_problem(root_, "JIT cache directory", "the JIT cache", owner_uid_);
}

std::string JitCache::chain_problem(const std::filesystem::path& dir) const {
  if (std::string why = trust_problem(); !why.empty()) return why;
  std::filesystem::path p = root_;
  for (const std::filesystem::path& part : dir.lexically_relative(root_)) {
    p /= part;
    // NOTE: below the root a symlink could lead anywhere, past the checks of the root's chain.
    std::error_code ec;
    if (std::filesystem::is_symlink(p, ec))
      return "JIT cache directory " + p.string() + " is a symbolic link; expected a directory";
    if (std::string why = trust::path_problem(p, "JIT cache directory", owner_uid_); !why.empty()) return why;
  }
  return {};
}

std::filesystem::path JitCache::entry_path(const std::string& arch, const Digest& key, Image image) const {
  const std::string hex = to_hex(key);
  return root_ / "jit" / ("v" + std::to_string(kKeySchema)) / arch / hex.substr(0, 2) /
         (hex + (image == Image::ptx ? ".ptx" : ".cubin"));
}

CacheRead JitCache::load(const std::string& arch, const Digest& key, Image image) const {
  CacheRead r;
  const std::string path = entry_path(arch, key, image).string();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    if (errno == ELOOP) {
      r.state = EntryState::untrusted;
      r.why = "JIT cache entry " + path + " is a symbolic link; expected a regular file";
      return r;
    }
    r.state = (errno == ENOENT || errno == ENOTDIR) ? EntryState::absent : EntryState::corrupt;
    if (r.state == EntryState::corrupt) r.why = errno_text("open " + path);
    return r;
  }
  // The directories are checked before the file: while they pass, no one else can swap the
  // file between this check and the read.
  std::string distrust = chain_problem(std::filesystem::path(path).parent_path());
  if (distrust.empty()) distrust = trust::path_problem(path, "JIT cache entry", owner_uid_);
  if (!distrust.empty()) {
    ::close(fd);
    r.state = EntryState::untrusted;
    r.why = std::move(distrust);
    return r;
  }
  struct stat st{};
  std::vector<uint8_t> bytes;
  bool ok = ::fstat(fd, &st) == 0 && static_cast<uint64_t>(st.st_size) <= kMaxPayload + kEntryHeaderBytes;
  if (ok) {
    bytes.resize(static_cast<size_t>(st.st_size));
    size_t got = 0;
    while (got < bytes.size()) {
      const ssize_t n = ::read(fd, bytes.data() + got, bytes.size() - got);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      got += static_cast<size_t>(n);
    }
    bytes.resize(got);
  }
  ::close(fd);
  if (!ok) {
    r.state = EntryState::corrupt;
    r.why = "cannot size " + path;
    return r;
  }
  r = decode_entry(key, bytes);
  if (r.state == EntryState::corrupt) r.why = path + ": " + r.why;
  return r;
}

std::string JitCache::store(const std::string& arch, const Digest& key, std::span<const uint8_t> payload,
                            Image image) const {
  const std::filesystem::path final_path = entry_path(arch, key, image);
  const std::filesystem::path dir = final_path.parent_path();
  if (std::string why = trust_problem(); !why.empty()) return why;
  // One directory at a time with an explicit mode (create_directories would take 0777 less
  // the umask, group-writable under umask 002); another process may create one too: fine.
  std::error_code ec;
  std::filesystem::path made;
  for (const std::filesystem::path& part : dir) {
    made /= part;
    if (::mkdir(made.c_str(), 0755) != 0 && errno != EEXIST && !std::filesystem::is_directory(made, ec)) break;
  }
  if (!std::filesystem::is_directory(dir, ec)) return "cannot create " + dir.string();
  if (std::string why = chain_problem(dir); !why.empty()) return why;

  // NOTE: the entry is written under a name no other writer uses, in the same directory (so
  // the rename cannot cross filesystems), made durable, and only then renamed over the final
  // name. rename() is atomic: a reader sees the old entry, no entry, or the whole new one,
  // never a mix; two processes racing on one key both publish identical, complete files.
  const std::filesystem::path tmp = dir / temp_name(to_hex(key));
  const std::vector<uint8_t> bytes = encode_entry(key, payload);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return errno_text("create " + tmp.string());
  std::string err;
  if (!write_all(fd, bytes.data(), bytes.size()))
    err = errno_text("write " + tmp.string());
  else if (::fsync(fd) != 0)  // NOTE: without it a crash after the rename can leave a hole-filled entry
    err = errno_text("fsync " + tmp.string());
  if (::close(fd) != 0 && err.empty()) err = errno_text("close " + tmp.string());
  if (err.empty() && ::rename(tmp.c_str(), final_path.c_str()) != 0) err = errno_text("rename to " + final_path.string());
  if (!err.empty()) {
    ::unlink(tmp.c_str());
    return err;
  }
  // NOTE: fsync the directory so the new name itself survives a crash (ext4/xfs need it).
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  remove_stale_temps(dir);
  return "";
}

}  // namespace moeq::jit
