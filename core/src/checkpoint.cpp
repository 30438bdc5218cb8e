// Opening a Hugging Face style checkpoint directory. Everything is checked up front (config,
// index, shards, index/shard agreement, duplicate tensors) so that a bad checkpoint fails at
// open, naming the files involved, instead of half-way through loading a layer.
#include <moeq/checkpoint.hpp>
#include <moeq/error.hpp>
#include <moeq/parallel_for.hpp>

#include <boost/json/basic_parser_impl.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

namespace moeq {

namespace json = boost::json;
namespace fs = std::filesystem;

namespace {

// SAX handler that only looks for a key repeated within one object: boost::json::parse
// silently keeps the last one, which would let two headers disagree about a tensor.
class DuplicateKeyFinder {
 public:
  static constexpr std::size_t max_array_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_object_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_string_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_key_size = static_cast<std::size_t>(-1);

  const std::string& duplicate() const { return duplicate_; }

  bool on_document_begin(json::error_code&) { return true; }
  bool on_document_end(json::error_code&) { return true; }
  bool on_array_begin(json::error_code&) { return push(); }
  bool on_array_end(std::size_t, json::error_code&) { return pop(); }
  bool on_object_begin(json::error_code&) { return push(); }
  bool on_object_end(std::size_t, json::error_code&) { return pop(); }
  bool on_string_part(json::string_view, std::size_t, json::error_code&) { return true; }
  bool on_string(json::string_view, std::size_t, json::error_code&) { return true; }
  bool on_key_part(json::string_view s, std::size_t, json::error_code&) {
    key_.append(s.data(), s.size());
    return true;
  }
  bool on_key(json::string_view s, std::size_t, json::error_code& ec) {
    key_.append(s.data(), s.size());
    bool fresh = levels_[depth_ - 1].insert(key_);
    if (!fresh) {
      duplicate_ = key_;
      ec = json::error::syntax;  // stops the parse; the caller reports duplicate()
    }
    key_.clear();
    return fresh;
  }
  bool on_number_part(json::string_view, json::error_code&) { return true; }
  bool on_int64(int64_t, json::string_view, json::error_code&) { return true; }
  bool on_uint64(uint64_t, json::string_view, json::error_code&) { return true; }
  bool on_double(double, json::string_view, json::error_code&) { return true; }
  bool on_bool(bool, json::error_code&) { return true; }
  bool on_null(json::error_code&) { return true; }
  bool on_comment_part(json::string_view, json::error_code&) { return true; }
  bool on_comment(json::string_view, json::error_code&) { return true; }

 private:
  // The keys of one open object. A level is kept, with its memory, for the next object at the
  // same depth: a header's thousands of small objects then allocate nothing. Small objects
  // compare against a list; past kListed keys a hash set takes over.
  struct Level {
    static constexpr std::size_t kListed = 16;
    std::vector<std::string> list;  // the first `count` entries are this object's keys
    std::size_t count = 0;
    std::unordered_set<std::string> set;  // every key, once count > kListed
    void clear() {
      count = 0;
      set.clear();
    }
    bool insert(const std::string& key) {
      if (count < kListed) {
        for (std::size_t i = 0; i < count; ++i)
          if (list[i] == key) return false;
        if (list.size() <= count) list.emplace_back();
        list[count++].assign(key);
        return true;
      }
      if (count == kListed) set.insert(list.begin(), list.begin() + kListed);
      ++count;
      return set.insert(key).second;
    }
  };
  // Arrays open a level that never receives keys; this keeps push/pop symmetric.
  bool push() {
    if (levels_.size() <= depth_) levels_.emplace_back();
    levels_[depth_++].clear();
    return true;
  }
  bool pop() {
    --depth_;
    return true;
  }
  std::vector<Level> levels_;
  std::size_t depth_ = 0;
  std::string key_;
  std::string duplicate_;
};

bool shard_name_escapes(const std::string& shard);

// One pass over an index that builds its weight_map directly (the common case: no DOM, no
// second pass for duplicate keys). It gives up, and the caller parses the strict way, which
// then names the problem, on anything but a well-formed object whose "weight_map" is an
// object of strings: a syntax error, a duplicate key anywhere, another type there, or none.
class WeightMapBuilder {
 public:
  static constexpr std::size_t max_array_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_object_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_string_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_key_size = static_cast<std::size_t>(-1);

  std::map<std::string, std::string>& map() { return map_; }
  // The first tensor, in the file's order, whose shard name leaves the directory (none if none).
  const std::optional<std::string>& first_escape() const { return first_escape_; }
  bool complete() const { return seen_map_ && !given_up_; }

  bool on_document_begin(json::error_code&) { return true; }
  bool on_document_end(json::error_code&) { return true; }
  bool on_object_begin(json::error_code& ec) {
    if (depth_ == 1 && in_map_key_) {
      if (seen_map_) return give_up(ec);  // a second "weight_map" is a duplicate key
      seen_map_ = in_map_ = true;
      in_map_key_ = false;
    } else if (depth_ == 2 && in_map_) {
      return give_up(ec);  // an entry that is not a string
    }
    ++depth_;
    keys_.emplace_back();
    return true;
  }
  bool on_object_end(std::size_t, json::error_code&) {
    --depth_;
    keys_.pop_back();
    if (depth_ == 1) in_map_ = false;
    return true;
  }
  bool on_array_begin(json::error_code& ec) {
    if (depth_ == 0 || (depth_ == 1 && in_map_key_) || (depth_ == 2 && in_map_)) return give_up(ec);
    ++depth_;
    keys_.emplace_back();  // never receives keys: keeps push and pop symmetric
    return true;
  }
  bool on_array_end(std::size_t, json::error_code&) {
    --depth_;
    keys_.pop_back();
    return true;
  }
  bool on_key_part(json::string_view s, std::size_t, json::error_code&) {
    key_.append(s.data(), s.size());
    return true;
  }
  bool on_key(json::string_view s, std::size_t, json::error_code& ec) {
    key_.append(s.data(), s.size());
    if (depth_ == 2 && in_map_) {
      tensor_ = std::move(key_);  // a repeat shows at its insertion
    } else {
      if (!keys_.back().insert(key_).second) return give_up(ec);
      in_map_key_ = depth_ == 1 && key_ == "weight_map";
    }
    key_.clear();
    return true;
  }
  bool on_string_part(json::string_view s, std::size_t, json::error_code&) {
    value_.append(s.data(), s.size());
    return true;
  }
  bool on_string(json::string_view s, std::size_t, json::error_code& ec) {
    value_.append(s.data(), s.size());
    if (depth_ == 1 && in_map_key_) return give_up(ec);  // "weight_map": "..."
    if (depth_ == 2 && in_map_) {
      // Exporters write the map sorted: the hint makes each insertion constant time then.
      const std::size_t before = map_.size();
      if (!first_escape_ && shard_name_escapes(value_)) first_escape_ = tensor_;  // "" is a name too
      map_.emplace_hint(map_.end(), std::move(tensor_), std::move(value_));
      if (map_.size() == before) return give_up(ec);  // a tensor named twice
      tensor_.clear();
    }
    value_.clear();
    return true;
  }
  bool on_number_part(json::string_view, json::error_code&) { return true; }
  bool on_int64(int64_t, json::string_view, json::error_code& ec) { return scalar(ec); }
  bool on_uint64(uint64_t, json::string_view, json::error_code& ec) { return scalar(ec); }
  bool on_double(double, json::string_view, json::error_code& ec) { return scalar(ec); }
  bool on_bool(bool, json::error_code& ec) { return scalar(ec); }
  bool on_null(json::error_code& ec) { return scalar(ec); }
  bool on_comment_part(json::string_view, json::error_code&) { return true; }
  bool on_comment(json::string_view, json::error_code&) { return true; }

 private:
  bool give_up(json::error_code& ec) {
    given_up_ = true;
    ec = json::error::syntax;  // stops the parse
    return false;
  }
  // A number, bool or null: fine in the metadata, not as the root, the map or an entry.
  bool scalar(json::error_code& ec) {
    if (depth_ == 0 || (depth_ == 1 && in_map_key_) || (depth_ == 2 && in_map_)) return give_up(ec);
    return true;
  }

  std::map<std::string, std::string> map_;
  std::vector<std::unordered_set<std::string>> keys_;
  std::string key_, tensor_, value_;
  std::optional<std::string> first_escape_;
  int depth_ = 0;
  bool in_map_key_ = false, in_map_ = false, seen_map_ = false, given_up_ = false;
};

const char* kind_name(const json::value& v) {
  switch (v.kind()) {
    case json::kind::null: return "null";
    case json::kind::bool_: return "bool";
    case json::kind::int64:
    case json::kind::uint64: return "integer";
    case json::kind::double_: return "number";
    case json::kind::string: return "string";
    case json::kind::array: return "array";
    case json::kind::object: return "object";
  }
  return "unknown";
}

std::string quoted(const fs::path& p) { return "'" + p.string() + "'"; }

// The type of what `p` names, following symlinks. Absent (or a dangling link) is not_found;
// any other failure, such as a symlink loop, is an Error naming the path.
fs::file_type type_of(const fs::path& p) {
  std::error_code ec;
  const fs::file_status st = fs::status(p, ec);
  if (st.type() == fs::file_type::not_found) return fs::file_type::not_found;
  if (ec) fail("cannot stat " + quoted(p) + ": " + ec.message());
  return st.type();
}

// True when `p` is a regular file, false when absent; anything else there is an Error.
bool regular_file_present(const fs::path& p) {
  const fs::file_type t = type_of(p);
  if (t == fs::file_type::not_found) return false;
  if (t != fs::file_type::regular) fail(quoted(p) + " is not a regular file");
  return true;
}

json::object read_json_object(const fs::path& path, const ReaderLimits& limits) {
  json::value v = read_json_file(path, limits.max_json_file_bytes);
  if (!v.is_object())
    fail(quoted(path) + ": expected a JSON object, found " + kind_name(v));
  return std::move(v.get_object());
}

// A present key whose value is JSON null counts as absent (some exporters write that).
const json::value* non_null(const json::object& o, std::string_view key) {
  const json::value* v = o.if_contains(key);
  return v && !v->is_null() ? v : nullptr;
}

QuantConfigSource find_quant_config(const fs::path& dir, const json::object& config,
                                    const ReaderLimits& limits) {
  const fs::path hf = dir / "hf_quant_config.json";
  if (!regular_file_present(hf)) return select_quant_config(config, nullptr);
  const json::object hf_config = read_json_object(hf, limits);
  return select_quant_config(config, &hf_config);
}

// A shard name from the index must name a file inside the checkpoint directory.
bool shard_name_escapes(const std::string& shard) {
  return shard.empty() || shard == "." || shard.find("..") != std::string::npos ||
         shard.find('/') != std::string::npos || shard.find('\\') != std::string::npos ||
         shard.find('\0') != std::string::npos;
}

// An index may list at most limits.max_tensors tensors.
void check_index_size(const fs::path& index, std::size_t listed, const ReaderLimits& limits) {
  if (listed > limits.max_tensors)
    fail("index " + quoted(index) + " lists " + std::to_string(listed) + " tensors, more than the limit of " +
         std::to_string(limits.max_tensors));
}

void check_shard_name(const fs::path& index, const std::string& tensor,
                      const std::string& shard) {
  if (shard_name_escapes(shard))
    fail("index " + quoted(index) + ": tensor '" + tensor + "' names shard '" + shard +
         "', expected a plain file name inside the checkpoint directory");
}

// The bytes of a JSON file of at most `max_bytes`.
std::string read_text_file(const fs::path& path, uint64_t max_bytes) {
  // NOTE: POSIX open with O_NONBLOCK, then fstat: a FIFO or device planted under a JSON
  // file's name is refused instead of blocking or reading without end.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    const int err = errno;
    fail(err == ENOENT ? MOEQ_STATUS_CODE_NOT_FOUND : MOEQ_STATUS_CODE_INVALID_ARGUMENT,
         "cannot open JSON file " + quoted(path) + ": " + std::strerror(err));
  }
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};
  struct stat st{};
  if (::fstat(fd, &st) != 0) fail("cannot stat JSON file " + quoted(path) + ": " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail("JSON file " + quoted(path) + " is not a regular file");
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size > max_bytes)
    fail("JSON file " + quoted(path) + " is " + std::to_string(size) + " bytes, more than the limit of " +
         std::to_string(max_bytes));
  std::string text(static_cast<std::size_t>(size), '\0');
  std::size_t got = 0;
  while (got < text.size()) {
    const ssize_t n = ::read(fd, text.data() + got, text.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("cannot read JSON file " + quoted(path) + ": " + std::strerror(errno));
    if (n == 0) break;  // the file shrank while being read: parse what is there
    got += static_cast<std::size_t>(n);
  }
  text.resize(got);
  return text;
}

// weight_map of the index: tensor name -> shard file name.
std::map<std::string, std::string> read_weight_map(const fs::path& index, const ReaderLimits& limits) {
  return parse_weight_map(read_text_file(index, limits.max_json_file_bytes), index, limits);
}

// Opens every file (its header parsed and checked, its bytes mapped) on a thread each, up to 16
// at once: a checkpoint of many shards spends its open parsing their headers. Each error is the
// one a sequential open would have met first: the first failing file in `paths`' order.
std::vector<std::shared_ptr<SafetensorsFile>> open_files(const std::vector<fs::path>& paths, const ReaderLimits& limits) {
  std::vector<std::shared_ptr<SafetensorsFile>> files(paths.size());
  std::vector<std::exception_ptr> errors(paths.size());
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  parallel_for(paths.size(), std::min(hw, 16u), [&](size_t i) {
    try {
      files[i] = SafetensorsFile::open(paths[i], limits);
    } catch (...) {
      errors[i] = std::current_exception();
    }
  });
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
  return files;
}

std::vector<std::shared_ptr<SafetensorsFile>> open_indexed_shards(
    const fs::path& dir, const fs::path& index,
    const std::map<std::string, std::string>& weight_map, const ReaderLimits& limits) {
  std::map<std::string, std::string> first_tensor;  // shard -> a tensor that names it
  for (const auto& [tensor, shard] : weight_map) first_tensor.emplace(shard, tensor);
  if (first_tensor.size() > limits.max_files)
    fail("index " + quoted(index) + " names " + std::to_string(first_tensor.size()) +
         " shard files, more than the limit of " + std::to_string(limits.max_files));
  std::vector<fs::path> paths;
  for (const auto& [shard, tensor] : first_tensor) {
    fs::path path = dir / shard;
    if (!regular_file_present(path))
      fail("index " + quoted(index) + " names shard '" + shard + "' (for tensor '" + tensor +
           "'), but " + quoted(path) + " does not exist");
    paths.push_back(std::move(path));
  }
  return open_files(paths, limits);
}

// The index and the shards must agree both ways: every indexed tensor is in the shard the
// index names, and every shard tensor is indexed. `tensors`: every shard's, merged (each names
// its file). Together the two name any disagreement: a tensor indexed under the wrong shard
// fails the first walk.
void check_index_agreement(const fs::path& index,
                           const std::map<std::string, std::string>& weight_map,
                           const std::vector<std::shared_ptr<SafetensorsFile>>& files,
                           const std::map<std::string, TensorInfo>& tensors) {
  std::map<std::string, const SafetensorsFile*> by_name;
  for (const auto& f : files) by_name.emplace(f->path().filename().string(), f.get());
  for (const auto& [tensor, shard] : weight_map) {
    const SafetensorsFile* file = by_name.at(shard);
    const auto it = tensors.find(tensor);
    if (it == tensors.end() || it->second.file != file->path())
      fail("tensor '" + tensor + "' is listed in index " + quoted(index) + " under shard " +
           quoted(file->path()) + ", but that shard does not contain it");
  }
  for (const auto& [tensor, info] : tensors)
    if (!weight_map.contains(tensor))
      fail("tensor '" + tensor + "' in shard " + quoted(info.file) + " is not listed in index " + quoted(index));
}

// The common case of check_index_agreement in one walk: the index and the checkpoint's tensors
// (both sorted by name) hold the same names, each in the shard the index names. False on any
// difference, for check_index_agreement to name.
bool index_agrees(const std::map<std::string, std::string>& weight_map, const std::map<std::string, TensorInfo>& tensors,
                  const std::vector<std::shared_ptr<SafetensorsFile>>& files) {
  if (weight_map.size() != tensors.size()) return false;
  std::vector<std::pair<const std::string*, std::string>> shard_of;  // a file's path, its name in the index
  for (const auto& f : files) shard_of.emplace_back(&f->path().native(), f->path().filename().string());
  std::size_t last = 0;
  auto t = tensors.begin();
  for (const auto& [tensor, shard] : weight_map) {
    if (t->first != tensor) return false;
    const std::string& path = t->second.file.native();
    if (last >= shard_of.size() || *shard_of[last].first != path) {
      last = 0;
      while (last < shard_of.size() && *shard_of[last].first != path) ++last;
      if (last == shard_of.size()) return false;
    }
    if (shard_of[last].second != shard) return false;
    ++t;
  }
  return true;
}

std::vector<fs::path> all_safetensors(const fs::path& dir, const ReaderLimits& limits) {
  std::vector<fs::path> paths;
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  for (const fs::directory_iterator end; !ec && it != end; it.increment(ec)) {
    if (it->path().extension() != ".safetensors") continue;
    if (!regular_file_present(it->path())) continue;  // a dangling link is not a shard
    if (paths.size() >= limits.max_files)
      fail("checkpoint directory " + quoted(dir) + " holds more than the limit of " +
           std::to_string(limits.max_files) + " .safetensors files");
    paths.push_back(it->path());
  }
  if (ec) fail("cannot list checkpoint directory " + quoted(dir) + ": " + ec.message());
  std::sort(paths.begin(), paths.end());
  return paths;
}

}  // namespace

json::value parse_json_strict(std::string_view text, const std::string& source, json::storage_ptr storage) {
  json::error_code ec;
  json::value v = json::parse(json::string_view(text.data(), text.size()), ec, std::move(storage));
  if (ec) fail(source + ": invalid JSON: " + ec.message());
  json::basic_parser<DuplicateKeyFinder> finder{json::parse_options{}};
  finder.write_some(false, text.data(), text.size(), ec);
  if (!finder.handler().duplicate().empty())
    fail(source + ": duplicate key \"" + finder.handler().duplicate() + "\" in a JSON object");
  return v;
}

json::value read_json_file(const fs::path& path, uint64_t max_bytes) {
  return parse_json_strict(read_text_file(path, max_bytes), quoted(path));
}

QuantConfigSource select_quant_config(const json::object& config, const json::object* hf_quant_config) {
  if (hf_quant_config != nullptr) return {json::serialize(*hf_quant_config), "hf_quant_config.json"};
  if (const json::value* q = non_null(config, "quantization_config"))
    return {json::serialize(*q), "config.json"};
  if (const json::value* q = non_null(config, "compression_config"))  // older compressed-tensors
    return {json::serialize(*q), "config.json"};
  return {"null", "none"};
}

std::map<std::string, std::string> parse_weight_map(std::string_view text, const fs::path& index,
                                                    const ReaderLimits& limits) {
  {  // one pass for the well-formed index; whatever it gives up on, the strict parse names
    json::basic_parser<WeightMapBuilder> fast{json::parse_options{}};
    json::error_code ec;
    const std::size_t used = fast.write_some(false, text.data(), text.size(), ec);
    if (!ec && used == text.size() && fast.done() && fast.handler().complete()) {  // nothing after the object
      std::map<std::string, std::string>& map = fast.handler().map();
      check_index_size(index, map.size(), limits);
      // NOTE: the file's order, as weight_map_of walks it: the same entry is named.
      if (const auto& t = fast.handler().first_escape()) check_shard_name(index, *t, map.at(*t));
      return std::move(map);
    }
  }
  return weight_map_of(parse_json_strict(text, quoted(index)), index, limits);
}

std::map<std::string, std::string> weight_map_of(const json::value& root, const fs::path& index,
                                                 const ReaderLimits& limits) {
  if (!root.is_object())
    fail(quoted(index) + ": expected a JSON object, found " + kind_name(root));
  const json::value* map = root.get_object().if_contains("weight_map");
  if (!map)
    fail("index " + quoted(index) + ": missing \"weight_map\"");
  if (!map->is_object())
    fail("index " + quoted(index) + ": \"weight_map\": expected an object, found " +
         kind_name(*map));
  check_index_size(index, map->get_object().size(), limits);
  std::map<std::string, std::string> out;
  for (const auto& kv : map->get_object()) {
    std::string tensor(kv.key());
    if (!kv.value().is_string())
      fail("index " + quoted(index) + ": weight_map entry for tensor '" + tensor +
           "': expected a shard file name (string), found " + kind_name(kv.value()));
    std::string shard(kv.value().get_string());
    check_shard_name(index, tensor, shard);
    out.emplace(std::move(tensor), std::move(shard));
  }
  return out;
}

Checkpoint Checkpoint::open(const fs::path& dir, const ReaderLimits& limits) {
  const fs::file_type dir_type = type_of(dir);
  if (dir_type == fs::file_type::not_found)
    fail(MOEQ_STATUS_CODE_NOT_FOUND, "checkpoint directory " + quoted(dir) + " does not exist");
  if (dir_type != fs::file_type::directory)
    fail("checkpoint path " + quoted(dir) + " is not a directory");
  fs::path config_path = dir / "config.json";
  if (!regular_file_present(config_path))
    fail(MOEQ_STATUS_CODE_NOT_FOUND,
         "checkpoint directory " + quoted(dir) + " has no config.json");

  Checkpoint ckpt;
  ckpt.dir_ = dir;
  ckpt.config_ = read_json_object(config_path, limits);
  ckpt.quant_ = find_quant_config(dir, ckpt.config_, limits);

  fs::path index = dir / "model.safetensors.index.json";
  const bool has_index = regular_file_present(index);
  std::map<std::string, std::string> weight_map;
  if (has_index) {
    weight_map = read_weight_map(index, limits);
    ckpt.files_ = open_indexed_shards(dir, index, weight_map, limits);
  } else if (regular_file_present(dir / "model.safetensors")) {
    ckpt.files_.push_back(SafetensorsFile::open(dir / "model.safetensors", limits));
  } else {
    ckpt.files_ = open_files(all_safetensors(dir, limits), limits);
  }
  {  // .safetensors files not read (none when every file was)
    std::set<fs::path> read;
    for (const auto& f : ckpt.files_) read.insert(f->path().filename());
    std::error_code ec;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end && ckpt.unread_.size() < limits.max_files;
         it.increment(ec))
      if (it->path().extension() == ".safetensors" && regular_file_present(it->path()) &&
          !read.count(it->path().filename()))
        ckpt.unread_.push_back(it->path());
    std::sort(ckpt.unread_.begin(), ckpt.unread_.end());
  }
  if (ckpt.files_.empty())
    fail(MOEQ_STATUS_CODE_NOT_FOUND,
         "checkpoint directory " + quoted(dir) +
             " has no weights: expected model.safetensors.index.json, model.safetensors or "
             "*.safetensors files, found none");

  auto tensors = std::make_shared<std::map<std::string, TensorInfo>>();
  // Duplicates first: a tensor in two shards is the clearer message than a disagreement.
  for (const auto& file : ckpt.files_) {
    // A file's names come sorted: each goes right after the one before unless another file's
    // fall between, so the hint makes most insertions constant time. The entries move from the
    // file's map into the checkpoint's (map nodes handed over: no copy, no allocation).
    auto hint = tensors->end();
    auto& own = file->tensors_;
    for (auto next = own.begin(); next != own.end();) {
      auto node = own.extract(next++);
      const auto it = tensors->insert(hint, std::move(node));
      if (!node.empty())  // not inserted: a tensor of that name is there already
        fail("tensor '" + node.key() + "' appears in both " + quoted(it->second.file) + " and " +
             quoted(file->path()));
      hint = std::next(it);
      if (tensors->size() > limits.max_tensors)
        fail("checkpoint directory " + quoted(dir) + " holds more than the limit of " +
             std::to_string(limits.max_tensors) + " tensors (reached in " + quoted(file->path()) + ")");
    }
  }
  if (has_index && !index_agrees(weight_map, *tensors, ckpt.files_))
    check_index_agreement(index, weight_map, ckpt.files_, *tensors);
  ckpt.tensors_ = std::move(tensors);
  return ckpt;
}

const TensorInfo* Checkpoint::find(const std::string& name) const {
  auto it = tensors_->find(name);
  return it == tensors_->end() ? nullptr : &it->second;
}

}  // namespace moeq
