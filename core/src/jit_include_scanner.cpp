// The transitive #include closure of a kernel source, for the JIT cache key.
#include <moeq/error.hpp>
#include <moeq/jit_include_scanner.hpp>

#include <sys/stat.h>

#include <algorithm>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

namespace moeq::jit {
namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(MOEQ_STATUS_CODE_NOT_FOUND, "jit: cannot read header " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool regular_file(const std::string& path) {
  struct stat st{};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace

std::vector<IncludeDirective> find_includes(std::string_view text) {
  std::vector<IncludeDirective> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    size_t i = 0;
    while (i < line.size() && is_space(line[i])) ++i;
    if (i >= line.size() || line[i] != '#') continue;
    ++i;
    while (i < line.size() && is_space(line[i])) ++i;
    constexpr std::string_view kInclude = "include";
    if (line.substr(i, kInclude.size()) != kInclude) continue;
    i += kInclude.size();
    if (i < line.size() && !is_space(line[i]) && line[i] != '<' && line[i] != '"') continue;  // include_next
    while (i < line.size() && is_space(line[i])) ++i;
    if (i >= line.size()) continue;
    const char open = line[i];
    const char close = open == '<' ? '>' : open == '"' ? '"' : '\0';
    if (close == '\0') {
      // A computed include (#include MACRO): keep its text so the key at least sees it.
      size_t j = i;
      while (j < line.size() && !is_space(line[j]) && line[j] != '/') ++j;
      out.push_back({"macro:" + std::string(line.substr(i, j - i)), false});
      continue;
    }
    const size_t stop = line.find(close, i + 1);
    if (stop == std::string_view::npos) continue;
    out.push_back({std::string(line.substr(i + 1, stop - i - 1)), open == '<'});
  }
  return out;
}

std::vector<std::string> include_dirs_in(const std::vector<std::string>& options) {
  std::vector<std::string> dirs;
  for (size_t i = 0; i < options.size(); ++i) {
    const std::string& o = options[i];
    if ((o == "-I" || o == "--include-path") && i + 1 < options.size())
      dirs.push_back(options[++i]);
    else if (o.rfind("--include-path=", 0) == 0)
      dirs.push_back(o.substr(15));
    else if (o.rfind("-I", 0) == 0 && o.size() > 2)
      dirs.push_back(o.substr(2));
  }
  return dirs;
}

std::shared_ptr<const IncludeScanner::FileInfo> IncludeScanner::file(const std::string& path) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0) fail(MOEQ_STATUS_CODE_NOT_FOUND, "jit: cannot stat header " + path);
  const int64_t mtime_ns = int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = files_.find(path);
    if (it != files_.end() && it->second->size == static_cast<uintmax_t>(st.st_size) &&
        it->second->mtime_ns == mtime_ns)
      return it->second;
  }
  auto info = std::make_shared<FileInfo>();
  const std::string text = read_file(path);
  info->size = static_cast<uintmax_t>(st.st_size);
  info->mtime_ns = mtime_ns;
  info->digest = digest(text);
  info->includes = find_includes(text);
  std::lock_guard<std::mutex> lock(mutex_);
  files_[path] = info;
  return info;
}

IncludeScan IncludeScanner::scan(const Request& request, const std::vector<std::string>& dirs) {
  std::map<std::string, const Header*> given;
  for (const Header& h : request.headers) given.emplace(h.name, &h);

  // Work items: a directive and the directory of the file that wrote it ("" for in-memory).
  struct Item {
    IncludeDirective directive;
    std::string from_dir;
  };
  std::deque<Item> work;
  for (auto& d : find_includes(request.source)) work.push_back({std::move(d), ""});

  std::set<std::string> given_seen, unresolved;
  std::map<std::string, Digest> files;
  while (!work.empty()) {
    Item item = std::move(work.front());
    work.pop_front();
    const std::string& name = item.directive.name;
    if (name.rfind("macro:", 0) == 0) {
      unresolved.insert(name);
      continue;
    }
    if (auto g = given.find(name); g != given.end()) {
      if (given_seen.insert(name).second)
        for (auto& d : find_includes(g->second->contents)) work.push_back({std::move(d), ""});
      continue;
    }
    std::string found;
    if (!item.directive.angled && !item.from_dir.empty()) {
      const std::string candidate = (std::filesystem::path(item.from_dir) / name).lexically_normal().string();
      if (regular_file(candidate)) found = candidate;
    }
    for (size_t i = 0; found.empty() && i < dirs.size(); ++i) {
      const std::string candidate = (std::filesystem::path(dirs[i]) / name).lexically_normal().string();
      if (regular_file(candidate)) found = candidate;
    }
    if (found.empty()) {
      unresolved.insert((item.directive.angled ? "<" : "\"") + name + (item.directive.angled ? ">" : "\""));
      continue;
    }
    if (files.count(found)) continue;
    auto info = file(found);
    files.emplace(found, info->digest);
    const std::string dir = std::filesystem::path(found).parent_path().string();
    for (const auto& d : info->includes) work.push_back({d, dir});
  }

  IncludeScan out;
  out.headers_reached.assign(given_seen.begin(), given_seen.end());
  for (auto& [path, digest] : files) out.files.push_back({path, digest});
  out.unresolved.assign(unresolved.begin(), unresolved.end());
  return out;
}

}  // namespace moeq::jit
