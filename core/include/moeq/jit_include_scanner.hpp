// Which headers a kernel source pulls in, transitively, so that the JIT cache key covers the
// contents of every one of them: the caller's in-memory headers and the toolkit's on disk.
// The scan is conservative: it follows every #include line, also in branches the
// preprocessor would drop, so it may hash a header NVRTC never reads, never the reverse
// (except computed `#include MACRO` lines, recorded by their text).
#pragma once
#include <moeq/jit.hpp>
#include <moeq/digest.hpp>

#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace moeq::jit {

struct IncludeDirective {
  std::string name;     // as written between the delimiters
  bool angled = false;  // <name> rather than "name"
  bool operator==(const IncludeDirective&) const = default;
};

// The #include directives of a text, in order.
std::vector<IncludeDirective> find_includes(std::string_view text);

// The -I directories named in NVRTC options ("-Idir", "-I dir", "--include-path=dir").
std::vector<std::string> include_dirs_in(const std::vector<std::string>& options);

struct IncludedFile {
  std::string path;  // as resolved, e.g. /usr/local/cuda/include/cuda_fp16.h
  Digest digest;  // XXH3-128 of its contents
};

struct IncludeScan {
  std::vector<std::string> headers_reached;  // names of the request's headers that are included
  std::vector<IncludedFile> files;           // disk headers reached, sorted by path
  std::vector<std::string> unresolved;       // names found nowhere (NVRTC built-ins), sorted
};

class IncludeScanner {
 public:
  // Follows the request's source through its headers (a given header wins over a file of
  // the same name, as in NVRTC) and the directories, in order. Thread-safe.
  IncludeScan scan(const Request& request, const std::vector<std::string>& dirs);

 private:
  struct FileInfo {
    uintmax_t size = 0;
    int64_t mtime_ns = 0;
    Digest digest{};
    std::vector<IncludeDirective> includes;
  };
  // A disk file's digest and directives, read once per (path, size, mtime).
  std::shared_ptr<const FileInfo> file(const std::string& path);

  std::mutex mutex_;
  std::unordered_map<std::string, std::shared_ptr<const FileInfo>> files_;
};

}  // namespace moeq::jit
