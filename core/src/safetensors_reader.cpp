// Safetensors reader on a read-only mapping. Every field of the header is checked before
// anything points into the file, so a truncated or hostile file fails here, by name, and
// never later as a wild read.
#include <moeq/checkpoint.hpp>  // parse_json_strict
#include <moeq/error.hpp>
#include <moeq/strings.hpp>
#include <moeq/safetensors.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <vector>

namespace moeq {

// ------------------------------------------------------------------ files changing underneath
//
// A mapped file truncated by another process turns every later read of a page past its new end
// into SIGBUS. The mappings register here; a SIGBUS inside one puts anonymous zero pages over the
// rest of that mapping, marks it changed and returns, so the read completes (with zeros) and the
// reader's change check (SafetensorsFile::check_unchanged, run by the loader after a load) fails
// the load naming the file. A SIGBUS anywhere else goes to the handler installed before ours.
namespace fault {

constexpr int kSlots = 4096;  // mappings guarded at once; past that a mapping is unguarded
struct Slot {
  std::atomic<std::uintptr_t> begin{0}, end{0};
  std::atomic<int> changed{0};
};
Slot g_slots[kSlots];
struct sigaction g_previous{};
std::uintptr_t g_page = 4096;

void on_sigbus(int sig, siginfo_t* info, void* context) {
  const auto addr = reinterpret_cast<std::uintptr_t>(info->si_addr);
  for (Slot& s : g_slots) {
    const std::uintptr_t b = s.begin.load(std::memory_order_acquire), e = s.end.load(std::memory_order_acquire);
    if (b == 0 || addr < b || addr >= e) continue;
    const std::uintptr_t page = addr & ~(g_page - 1);
    void* r = ::mmap(reinterpret_cast<void*>(page), e - page, PROT_READ, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED) break;
    s.changed.store(1, std::memory_order_release);
    return;
  }
  if (g_previous.sa_flags & SA_SIGINFO) {
    if (g_previous.sa_sigaction) return g_previous.sa_sigaction(sig, info, context);
  } else if (g_previous.sa_handler == SIG_IGN) {
    return;
  } else if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != nullptr) {
    return g_previous.sa_handler(sig);
  }
  ::signal(SIGBUS, SIG_DFL);
  ::raise(SIGBUS);
}

void install_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    g_page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    struct sigaction sa{};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, &g_previous);
  });
}

// The slot guarding [data, data + size), or -1 when every slot is taken.
int guard(const std::byte* data, std::size_t size) {
  install_once();
  for (int i = 0; i < kSlots; ++i) {
    std::uintptr_t expected = 0;
    if (g_slots[i].begin.compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) {  // reserve
      g_slots[i].changed.store(0, std::memory_order_relaxed);
      g_slots[i].end.store(reinterpret_cast<std::uintptr_t>(data) + size, std::memory_order_release);
      g_slots[i].begin.store(reinterpret_cast<std::uintptr_t>(data), std::memory_order_release);
      return i;
    }
  }
  return -1;
}
void unguard(int slot) {
  if (slot < 0) return;
  g_slots[slot].end.store(0, std::memory_order_release);
  g_slots[slot].begin.store(0, std::memory_order_release);
}
bool changed(int slot) { return slot >= 0 && g_slots[slot].changed.load(std::memory_order_acquire) != 0; }

}  // namespace fault

// RAII read-only mapping of a whole regular file. An empty file has no mapping.
class MappedFile {
 public:
  explicit MappedFile(const std::filesystem::path& path) {
    // NOTE: O_NONBLOCK so that a FIFO planted under a shard's name fails the regular-file
    // check below instead of blocking the open forever; it changes nothing for a file.
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) fail(MOEQ_STATUS_CODE_NOT_FOUND, os_error("cannot open", path));
    struct stat st{};
    if (::fstat(fd, &st) != 0) {
      std::string message = os_error("cannot stat", path);
      ::close(fd);
      fail(message);
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      fail("safetensors file '" + path.string() + "' is not a regular file");
    }
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ > 0) {
      void* base = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (base == MAP_FAILED) {
        std::string message = os_error("cannot mmap", path);
        ::close(fd);
        fail(message);
      }
      data_ = static_cast<const std::byte*>(base);
      slot_ = fault::guard(data_, size_);
    }
    // NOTE: the mapping keeps the file alive; the descriptor is not kept (a checkpoint may have
    // more shards than a process may hold descriptors). check_unchanged finds the file by name.
    ::close(fd);
    path_ = path;
    opened_ = st;
  }
  ~MappedFile() {
    fault::unguard(slot_);
    if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
  }
  // Empty when the file is as it was when mapped; else what changed: truncated (a read past the
  // new end found zero pages instead of a signal), or written (size or modification time moved).
  std::string change() const {
    if (fault::changed(slot_)) return "it was truncated while being read";
    // A name that now points at another file (replaced by a rename) leaves the mapped one as it
    // was: the bytes read are still the ones checked.
    struct stat now{};
    if (::stat(path_.c_str(), &now) != 0 || now.st_dev != opened_.st_dev || now.st_ino != opened_.st_ino) return {};
    if (now.st_size != opened_.st_size)
      return "its size went from " + std::to_string(opened_.st_size) + " to " + std::to_string(now.st_size) + " bytes";
    if (now.st_mtim.tv_sec != opened_.st_mtim.tv_sec || now.st_mtim.tv_nsec != opened_.st_mtim.tv_nsec)
      return "it was written (its modification time moved)";
    return {};
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }

 private:
  static std::string os_error(const char* what, const std::filesystem::path& path) {
    return std::string(what) + " safetensors file '" + path.string() +
           "': " + std::strerror(errno);
  }
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  int slot_ = -1;
  std::filesystem::path path_;
  struct stat opened_{};
};

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // the reader proved this product fits
  return n;
}

namespace {

namespace json = boost::json;

// Header fields, parsed and checked, before they are tied to the mapping.
struct Entry {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin;
  uint64_t end;
};

// Builds messages that always start with the file (and the tensor, once known).
class Context {
 public:
  explicit Context(const std::filesystem::path& path) : path_(path.string()) {}
  [[noreturn]] void fail_file(const std::string& what) const {
    fail("safetensors file '" + path_ + "': " + what);
  }
  [[noreturn]] void fail_tensor(const std::string& tensor, const std::string& what) const {
    fail("safetensors file '" + path_ + "', tensor '" + printable_name(tensor) + "': " + what);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

const char* kind_name(json::kind k) {
  switch (k) {
    case json::kind::null: return "null";
    case json::kind::bool_: return "bool";
    case json::kind::int64: return "integer";
    case json::kind::uint64: return "integer";
    case json::kind::double_: return "number";
    case json::kind::string: return "string";
    case json::kind::array: return "array";
    case json::kind::object: return "object";
  }
  return "unknown";
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

uint64_t read_u64_le(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | std::to_integer<uint64_t>(p[i]);
  return v;
}

// A JSON integer as int64 (negatives kept so the caller can name them); `what` names the
// field in the message.
int64_t to_int64(const Context& ctx, const std::string& tensor, const json::value& v,
                 const std::string& what) {
  if (v.is_int64()) return v.get_int64();
  if (v.is_uint64())
    ctx.fail_tensor(tensor, what + " " + std::to_string(v.get_uint64()) +
                                " is larger than 2^63-1");
  ctx.fail_tensor(tensor, what + ": expected an integer, found " + kind_name(v.kind()));
}

const json::value& field(const Context& ctx, const std::string& tensor,
                         const json::object& entry, const char* key, json::kind expected) {
  const json::value* v = entry.if_contains(key);
  if (!v) ctx.fail_tensor(tensor, std::string("missing \"") + key + "\"");
  if (v->kind() != expected)
    ctx.fail_tensor(tensor, std::string("\"") + key + "\": expected " + kind_name(expected) +
                                ", found " + kind_name(v->kind()));
  return *v;
}

DType parse_entry_dtype(const Context& ctx, const std::string& tensor,
                        const json::object& entry) {
  const json::string& name = field(ctx, tensor, entry, "dtype", json::kind::string).get_string();
  std::optional<DType> dtype = parse_dtype(std::string_view(name.data(), name.size()));
  if (!dtype)
    ctx.fail_tensor(tensor, "unknown dtype \"" + std::string(name) +
                                "\" (expected one of BF16, F16, F32, F8_E4M3, I8, U8, I32, I64)");
  return *dtype;
}

std::vector<int64_t> parse_entry_shape(const Context& ctx, const std::string& tensor,
                                       const json::object& entry, int max_rank) {
  const json::array& dims = field(ctx, tensor, entry, "shape", json::kind::array).get_array();
  if (dims.size() > static_cast<std::size_t>(std::max(max_rank, 0)))
    ctx.fail_tensor(tensor, "rank " + std::to_string(dims.size()) + " exceeds the limit " +
                                std::to_string(max_rank));
  std::vector<int64_t> shape;
  for (const json::value& d : dims) {
    int64_t dim = to_int64(ctx, tensor, d, "shape dimension");
    if (dim < 0) {
      ctx.fail_tensor(tensor, "negative dimension " + std::to_string(dim) + " in shape " +
                                  json::serialize(dims));
    }
    shape.push_back(dim);
  }
  return shape;
}

// Bytes the shape needs; throws if the element count or the byte count overflows 64 bits.
// NOTE: the product of the non-zero dimensions must fit too: a shape such as [0, 2^40, 2^40]
// holds no bytes, but the row-major strides that views compute from it would overflow.
uint64_t required_bytes(const Context& ctx, const std::string& tensor,
                        const std::vector<int64_t>& shape, DType dtype) {
  int64_t numel = 1;
  int64_t extent = 1;  // product of max(d, 1): the largest stride any view takes
  for (int64_t d : shape) {
    if (__builtin_mul_overflow(extent, std::max<int64_t>(d, 1), &extent))
      ctx.fail_tensor(tensor, "shape " + shape_text(shape) +
                                  " has more elements than fit in 64 bits (overflow)");
    numel *= d;  // |numel| <= extent, so this cannot overflow
  }
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(static_cast<uint64_t>(extent), dtype_size(dtype), &bytes))
    ctx.fail_tensor(tensor, "shape " + shape_text(shape) + " " + dtype_name(dtype) +
                                " needs more bytes than fit in 64 bits (overflow)");
  return static_cast<uint64_t>(numel) * dtype_size(dtype);
}

Entry parse_entry(const Context& ctx, const std::string& tensor, const json::value& value,
                  int max_rank) {
  if (!value.is_object())
    ctx.fail_tensor(tensor, std::string("expected an object with dtype, shape, data_offsets, "
                                        "found ") + kind_name(value.kind()));
  const json::object& entry = value.get_object();
  Entry e{tensor, parse_entry_dtype(ctx, tensor, entry), parse_entry_shape(ctx, tensor, entry, max_rank),
          0, 0};
  const json::array& offsets =
      field(ctx, tensor, entry, "data_offsets", json::kind::array).get_array();
  if (offsets.size() != 2)
    ctx.fail_tensor(tensor, "data_offsets: expected 2 integers [begin, end], found " +
                                std::to_string(offsets.size()) + " values");
  int64_t begin = to_int64(ctx, tensor, offsets[0], "data_offsets begin");
  int64_t end = to_int64(ctx, tensor, offsets[1], "data_offsets end");
  if (begin < 0 || end < 0)
    ctx.fail_tensor(tensor, "negative data_offsets " + json::serialize(offsets));
  if (end < begin)
    ctx.fail_tensor(tensor, "data_offsets " + json::serialize(offsets) +
                                ": end is before begin");
  e.begin = static_cast<uint64_t>(begin);
  e.end = static_cast<uint64_t>(end);
  uint64_t expected = required_bytes(ctx, tensor, e.shape, e.dtype);
  if (e.end - e.begin != expected)
    ctx.fail_tensor(tensor, "expected " + std::to_string(expected) + " bytes for shape " +
                                shape_text(e.shape) + " " + dtype_name(e.dtype) + ", found " +
                                std::to_string(e.end - e.begin) + " (data_offsets " +
                                json::serialize(offsets) + ")");
  return e;
}

std::map<std::string, std::string> parse_metadata(const Context& ctx, const json::value& v) {
  if (!v.is_object())
    ctx.fail_file(std::string("\"__metadata__\": expected an object of strings, found ") +
                  kind_name(v.kind()));
  std::map<std::string, std::string> out;
  for (const auto& kv : v.get_object()) {
    if (!kv.value().is_string())
      ctx.fail_file("\"__metadata__\" key \"" + std::string(kv.key()) +
                    "\": expected a string, found " + kind_name(kv.value().kind()));
    out.emplace(std::string(kv.key()), std::string(kv.value().get_string()));
  }
  return out;
}

// Non-empty ranges must be disjoint and, together, cover the data section exactly: the format
// allows neither a hole between two tensors nor bytes after the last one (a writer that leaves
// either has put bytes in the file that no tensor accounts for). Empty ranges hold no bytes and
// may sit anywhere.
void check_layout(const Context& ctx, std::vector<const Entry*> entries, uint64_t data_size) {
  std::erase_if(entries, [](const Entry* e) { return e->begin == e->end; });
  std::sort(entries.begin(), entries.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  const Entry* furthest = nullptr;  // the earlier range that reaches furthest
  for (const Entry* e : entries) {
    if (furthest && e->begin < furthest->end) {
      ctx.fail_file("tensors '" + furthest->name + "' [" + std::to_string(furthest->begin) +
                    ", " + std::to_string(furthest->end) + ") and '" + e->name + "' [" +
                    std::to_string(e->begin) + ", " + std::to_string(e->end) +
                    ") overlap in the data section");
    }
    const uint64_t covered = furthest ? furthest->end : 0;
    if (static_cast<uint64_t>(e->begin) > covered)
      ctx.fail_file("bytes [" + std::to_string(covered) + ", " + std::to_string(e->begin) +
                    ") of the data section belong to no tensor: a hole " +
                    (furthest ? "between '" + furthest->name + "' (ends at " + std::to_string(furthest->end) + ") and '"
                              : std::string("before the first tensor '")) +
                    e->name + "' (begins at " + std::to_string(e->begin) +
                    "); expected each tensor to begin where the previous one ends");
    if (!furthest || e->end > furthest->end) furthest = e;
  }
  const uint64_t covered = furthest ? static_cast<uint64_t>(furthest->end) : 0;
  if (covered != data_size)
    ctx.fail_file("the data section is " + std::to_string(data_size) + " bytes but its tensors cover " +
                  std::to_string(covered) + (furthest ? " (the last, '" + furthest->name + "', ends there)" : std::string()) +
                  ": expected no bytes after the last tensor, found " + std::to_string(data_size - covered));
}

}  // namespace

SafetensorsFile::~SafetensorsFile() = default;

std::size_t SafetensorsFile::file_size() const { return map_ ? map_->size() : 0; }

void SafetensorsFile::check_unchanged() const {
  if (!map_) return;
  if (const std::string what = map_->change(); !what.empty())
    fail("safetensors file '" + path_.string() + "' changed while it was read: " + what +
         "; the bytes loaded may not be the ones checked, load it again");
}

SafetensorsHeader parse_safetensors(std::span<const std::byte> bytes, const std::filesystem::path& path,
                                    const ReaderLimits& limits) {
  Context ctx(path);
  const std::byte* base = bytes.data();
  const uint64_t size = bytes.size();

  if (size < 8)
    ctx.fail_file("file is " + std::to_string(size) +
                  " bytes, expected at least 8 (the u64 header length); truncated?");
  const uint64_t header_len = read_u64_le(base);
  if (header_len > limits.max_header_bytes)
    ctx.fail_file("header length " + std::to_string(header_len) + " exceeds the limit of " +
                  std::to_string(limits.max_header_bytes) + " bytes");
  if (header_len > size - 8)
    ctx.fail_file("header length " + std::to_string(header_len) +
                  " runs past the end of the file: expected at most " +
                  std::to_string(size - 8) + " bytes after the length, found a file of " +
                  std::to_string(size) + " bytes");

  std::string_view header_text(reinterpret_cast<const char*>(base + 8), header_len);
  // The DOM lives only in this function: one arena for all of it (a header holds a few values
  // for each of its thousands of tensors), released at once on return.
  json::monotonic_resource arena(std::min<std::size_t>(2 * header_len + 1024, std::size_t{64} << 20));
  json::value header = parse_json_strict(header_text, "header of safetensors file '" + ctx.path() + "'", &arena);
  if (!header.is_object())
    ctx.fail_file(std::string("header: expected a JSON object, found ") +
                  kind_name(header.kind()));
  const json::object& root = header.get_object();

  SafetensorsHeader out;
  std::vector<Entry> entries;
  for (const auto& kv : root) {
    std::string name(kv.key());
    if (name == "__metadata__") {
      out.metadata = parse_metadata(ctx, kv.value());
      continue;
    }
    if (entries.size() >= limits.max_tensors_per_file)
      ctx.fail_file("too many tensors: more than the limit of " +
                    std::to_string(limits.max_tensors_per_file) + " per file");
    if (has_control_byte(name))
      ctx.fail_tensor(name, "the name holds a control byte (shown as \\xNN); expected a printable tensor name");
    entries.push_back(parse_entry(ctx, name, kv.value(), limits.max_rank));
  }

  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = size - data_start;
  for (const Entry& e : entries) {
    if (e.end > data_size)
      ctx.fail_tensor(e.name, "byte range [" + std::to_string(e.begin) + ", " +
                                  std::to_string(e.end) + ") runs past the end of the file: " +
                                  "data section is " + std::to_string(data_size) +
                                  " bytes (file " + std::to_string(size) + " bytes)");
  }
  std::vector<const Entry*> pointers;
  for (const Entry& e : entries) pointers.push_back(&e);
  check_layout(ctx, std::move(pointers), data_size);

  for (Entry& e : entries) {
    std::string key = e.name;
    TensorInfo info{std::move(e.name), e.dtype, std::move(e.shape), e.begin, e.end, base + data_start + e.begin, path};
    out.tensors.emplace(std::move(key), std::move(info));
  }
  return out;
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& path,
                                                       const ReaderLimits& limits) {
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->map_ = std::make_unique<MappedFile>(path);
  SafetensorsHeader header = parse_safetensors(
      std::span<const std::byte>(file->map_->data(), file->map_->size()), path, limits);
  file->tensors_ = std::move(header.tensors);
  file->metadata_ = std::move(header.metadata);
  return file;
}

}  // namespace moeq
