// The safetensors writer and reader: a round trip, then one case per malformed input, each
// checking that the message names the file or tensor and says what was expected and found.
#include <moeq/error.hpp>
#include <moeq/safetensors.hpp>
#include <moeq/strings.hpp>
#include <moeq_writer/safetensors_writer.hpp>

#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <vector>

using namespace moeq;
namespace fs = std::filesystem;

namespace {

// A fresh directory under the system temp dir, removed when the test ends.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = fs::temp_directory_path() /
            ("moeq_st_" + std::to_string(::getpid()) + "_" + std::to_string(rd()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  fs::path path_;
};

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

std::string u64_le(uint64_t v) {
  std::string s;
  for (int i = 0; i < 8; ++i) s.push_back(char((v >> (8 * i)) & 0xff));
  return s;
}

// A hand-made file: the header length (the real one unless overridden), header, data.
void write_raw(const fs::path& path, const std::string& header, std::size_t data_bytes,
               std::optional<uint64_t> header_len = std::nullopt) {
  write_bytes(path, u64_le(header_len.value_or(header.size())) + header +
                        std::string(data_bytes, '\x11'));
}

// The message of the moeq::Error that opening `path` throws ("" if it does not throw).
std::string open_error(const fs::path& path) {
  try {
    SafetensorsFile::open(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("writer output reads back: values, shapes, dtypes, metadata, alignment") {
  TempDir dir;
  fs::path path = dir / "model.safetensors";
  writer::SafetensorsWriter w;
  std::vector<float> wv = {1.0f, -2.5f, 0.125f, 3.0f, 448.0f, -0.0f};
  w.add_float("b.weight", DType::BF16, {2, 3}, wv);
  w.add_float("a.weight", DType::F8_E4M3, {3, 2}, {1.0f, 2.0f, -448.0f, 1000.0f, 0.5f, 0.0f});
  w.add_float("c.scale", DType::F32, {1}, {0.0123f});
  w.add_float("d.ids", DType::I64, {2}, {7.0f, -3.0f});
  w.add("e.empty", DType::F16, {0, 4}, {});
  w.set_metadata("format", "pt");
  w.set_metadata("producer", "moeq tests");
  CHECK(w.size() == 5);
  CHECK(w.names() == std::vector<std::string>{"a.weight", "b.weight", "c.scale", "d.ids",
                                              "e.empty"});
  w.write(path);

  auto file = SafetensorsFile::open(path);
  CHECK(file->path() == path);
  CHECK(file->file_size() == fs::file_size(path));
  CHECK(file->tensors().size() == 5);
  CHECK(file->metadata().at("format") == "pt");
  CHECK(file->metadata().at("producer") == "moeq tests");

  const TensorInfo& b = file->tensors().at("b.weight");
  CHECK(b.dtype == DType::BF16);
  CHECK(b.shape == std::vector<int64_t>{2, 3});
  CHECK(b.numel() == 6);
  CHECK(b.nbytes() == 12);
  CHECK(b.file == path);
  for (std::size_t i = 0; i < wv.size(); ++i) CHECK(load_as_float(b.data, b.dtype, i) == wv[i]);

  const TensorInfo& a = file->tensors().at("a.weight");
  CHECK(a.dtype == DType::F8_E4M3);
  CHECK(load_as_float(a.data, a.dtype, 2) == -448.0f);
  CHECK(load_as_float(a.data, a.dtype, 3) == 448.0f);  // saturated on the way in
  CHECK(load_as_float(a.data, a.dtype, 4) == 0.5f);

  const TensorInfo& c = file->tensors().at("c.scale");
  CHECK(load_as_float(c.data, c.dtype, 0) == 0.0123f);
  const TensorInfo& d = file->tensors().at("d.ids");
  CHECK(load_as_float(d.data, d.dtype, 1) == -3.0f);
  const TensorInfo& e = file->tensors().at("e.empty");
  CHECK(e.numel() == 0);
  CHECK(e.nbytes() == 0);

  // Data in name order, packed; header padded so that the data section is 8-aligned.
  CHECK(a.begin == 0);
  CHECK(b.begin == a.end);
  std::ifstream in(path, std::ios::binary);
  unsigned char len[8];
  in.read(reinterpret_cast<char*>(len), 8);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len[i];
  CHECK(header_len % 8 == 0);
  CHECK(fs::file_size(path) == 8 + header_len + e.end);
}

TEST_CASE("a file with only a header and no tensors is valid") {
  TempDir dir;
  write_raw(dir / "x.safetensors", "{}      ", 0);
  auto file = SafetensorsFile::open(dir / "x.safetensors");
  CHECK(file->tensors().empty());
}

TEST_CASE("zero-size tensors may share an offset with others") {
  TempDir dir;
  write_raw(dir / "x.safetensors",
            R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
            R"("z":{"dtype":"F32","shape":[0],"data_offsets":[2,2]}})",
            4);
  auto file = SafetensorsFile::open(dir / "x.safetensors");
  CHECK(file->tensors().at("z").numel() == 0);
}

TEST_CASE("writer refuses bytes that do not match shape x dtype") {
  writer::SafetensorsWriter w;
  try {
    w.add("w", DType::BF16, {2, 3}, std::vector<std::byte>(10));
    FAIL("expected an error");
  } catch (const Error& e) {
    std::string msg = e.what();
    INFO(msg);
    CHECK(has(msg, "'w'"));
    CHECK(has(msg, "expected 12 bytes for shape [2, 3] BF16, found 10"));
  }
  CHECK_THROWS_WITH_AS(w.add_float("v", DType::F32, {2}, {1.0f}),
                       doctest::Contains("expected 2 values"), Error);
  w.add_float("ok", DType::F32, {1}, {1.0f});
  CHECK_THROWS_WITH_AS(w.add_float("ok", DType::F32, {1}, {1.0f}),
                       doctest::Contains("already added"), Error);
}

TEST_CASE("missing file: the error names it") {
  TempDir dir;
  std::string msg = open_error(dir / "absent.safetensors");
  INFO(msg);
  CHECK(has(msg, "absent.safetensors"));
}

TEST_CASE("truncated file shorter than the 8-byte length is rejected") {
  TempDir dir;
  write_bytes(dir / "t.safetensors", std::string("\x10\x00\x00", 3));
  std::string msg = open_error(dir / "t.safetensors");
  INFO(msg);
  CHECK(has(msg, "t.safetensors"));
  CHECK(has(msg, "file is 3 bytes, expected at least 8"));
}

TEST_CASE("empty file is rejected as truncated") {
  TempDir dir;
  write_bytes(dir / "e.safetensors", "");
  CHECK(has(open_error(dir / "e.safetensors"), "file is 0 bytes"));
}

TEST_CASE("header length past the end of the file is rejected") {
  TempDir dir;
  write_raw(dir / "h.safetensors", "{}      ", 0, 4096);
  std::string msg = open_error(dir / "h.safetensors");
  INFO(msg);
  CHECK(has(msg, "h.safetensors"));
  CHECK(has(msg, "header length 4096 runs past the end of the file"));
  CHECK(has(msg, "found a file of 16 bytes"));
}

TEST_CASE("header length over the limit is rejected before anything is read") {
  TempDir dir;
  write_raw(dir / "h.safetensors", "{}", 0, kMaxSafetensorsHeaderBytes + 1);
  CHECK(has(open_error(dir / "h.safetensors"), "exceeds the limit"));
}

TEST_CASE("header that is not JSON is rejected") {
  TempDir dir;
  write_raw(dir / "j.safetensors", R"({"a": {"dtype": )", 0);
  std::string msg = open_error(dir / "j.safetensors");
  INFO(msg);
  CHECK(has(msg, "header of safetensors file"));
  CHECK(has(msg, "j.safetensors"));
  CHECK(has(msg, "invalid JSON"));
}

TEST_CASE("header that is JSON but not an object is rejected") {
  TempDir dir;
  write_raw(dir / "j.safetensors", "[1, 2]  ", 0);
  CHECK(has(open_error(dir / "j.safetensors"), "expected a JSON object, found array"));
}

TEST_CASE("duplicate tensor key in the header is rejected") {
  TempDir dir;
  write_raw(dir / "d.safetensors",
            R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
            R"("w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
            2);
  std::string msg = open_error(dir / "d.safetensors");
  INFO(msg);
  CHECK(has(msg, "duplicate key \"w\""));
}

TEST_CASE("unknown dtype is named") {
  TempDir dir;
  write_raw(dir / "u.safetensors", R"({"w":{"dtype":"F8_E5M2","shape":[2],"data_offsets":[0,2]}})",
            2);
  std::string msg = open_error(dir / "u.safetensors");
  INFO(msg);
  CHECK(has(msg, "tensor 'w'"));
  CHECK(has(msg, "unknown dtype \"F8_E5M2\""));
}

TEST_CASE("entry missing data_offsets is rejected") {
  TempDir dir;
  write_raw(dir / "m.safetensors", R"({"w":{"dtype":"U8","shape":[2]}})", 2);
  std::string msg = open_error(dir / "m.safetensors");
  INFO(msg);
  CHECK(has(msg, "tensor 'w'"));
  CHECK(has(msg, "missing \"data_offsets\""));
}

TEST_CASE("shape of the wrong JSON type is rejected") {
  TempDir dir;
  write_raw(dir / "s.safetensors", R"({"w":{"dtype":"U8","shape":"2","data_offsets":[0,2]}})", 2);
  CHECK(has(open_error(dir / "s.safetensors"), "\"shape\": expected array, found string"));
}

TEST_CASE("byte range that does not match shape x dtype is rejected") {
  TempDir dir;
  write_raw(dir / "b.safetensors",
            R"({"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,10]}})", 16);
  std::string msg = open_error(dir / "b.safetensors");
  INFO(msg);
  CHECK(has(msg, "b.safetensors"));
  CHECK(has(msg, "tensor 'w'"));
  CHECK(has(msg, "expected 12 bytes for shape [2, 3] BF16, found 10"));
}

TEST_CASE("end before begin is rejected") {
  TempDir dir;
  write_raw(dir / "r.safetensors", R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[4,2]}})", 8);
  CHECK(has(open_error(dir / "r.safetensors"), "end is before begin"));
}

TEST_CASE("byte range past the end of the file is rejected") {
  TempDir dir;
  write_raw(dir / "p.safetensors", R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
            12);
  std::string msg = open_error(dir / "p.safetensors");
  INFO(msg);
  CHECK(has(msg, "tensor 'w'"));
  CHECK(has(msg, "[0, 16) runs past the end of the file"));
  CHECK(has(msg, "data section is 12 bytes"));
}

TEST_CASE("overlapping byte ranges name both tensors") {
  TempDir dir;
  write_raw(dir / "o.safetensors",
            R"({"first":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},)"
            R"("second":{"dtype":"U8","shape":[4],"data_offsets":[6,10]}})",
            10);
  std::string msg = open_error(dir / "o.safetensors");
  INFO(msg);
  CHECK(has(msg, "'first' [0, 8)"));
  CHECK(has(msg, "'second' [6, 10)"));
  CHECK(has(msg, "overlap"));
}

TEST_CASE("a hole between two tensors' byte ranges is refused, naming both and the hole") {
  TempDir dir;
  write_raw(dir / "h.safetensors",
            R"({"first":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
            R"("second":{"dtype":"U8","shape":[4],"data_offsets":[6,10]}})",
            10);
  std::string msg = open_error(dir / "h.safetensors");
  INFO(msg);
  CHECK(has(msg, "h.safetensors"));
  CHECK(has(msg, "bytes [4, 6) of the data section belong to no tensor"));
  CHECK(has(msg, "'first' (ends at 4)"));
  CHECK(has(msg, "'second' (begins at 6)"));
}

TEST_CASE("bytes before the first tensor or after the last are refused") {
  TempDir dir;
  write_raw(dir / "lead.safetensors", R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})", 6);
  std::string lead = open_error(dir / "lead.safetensors");
  INFO(lead);
  CHECK(has(lead, "bytes [0, 2) of the data section belong to no tensor"));
  CHECK(has(lead, "before the first tensor 'w'"));

  write_raw(dir / "tail.safetensors", R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", 7);
  std::string tail = open_error(dir / "tail.safetensors");
  INFO(tail);
  CHECK(has(tail, "tail.safetensors"));
  CHECK(has(tail, "the data section is 7 bytes but its tensors cover 4"));
  CHECK(has(tail, "found 3"));

  // Only empty tensors: the data section must be empty too.
  write_raw(dir / "empty.safetensors", R"({"e":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}})", 1);
  CHECK(has(open_error(dir / "empty.safetensors"), "the data section is 1 bytes but its tensors cover 0"));
}

TEST_CASE("a tensor name with a NUL or another control byte is refused, the name escaped in full") {
  TempDir dir;
  write_raw(dir / "n.safetensors", R"({"model.w\u0000.shadow":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", 2);
  std::string msg = open_error(dir / "n.safetensors");
  INFO(msg);
  CHECK(msg.find('\0') == std::string::npos);
  CHECK(has(msg, "tensor 'model.w\\x00.shadow'"));
  CHECK(has(msg, "holds a control byte"));
  write_raw(dir / "e.safetensors", R"({"a\u001b[2Jb":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", 2);
  CHECK(has(open_error(dir / "e.safetensors"), "tensor 'a\\x1b[2Jb'"));
  CHECK(printable_name("back\\slash") == "back\\\\slash");
}

TEST_CASE("a range inside a longer earlier range overlaps too") {
  TempDir dir;
  write_raw(dir / "o.safetensors",
            R"({"big":{"dtype":"U8","shape":[10],"data_offsets":[0,10]},)"
            R"("mid":{"dtype":"U8","shape":[2],"data_offsets":[2,4]},)"
            R"("tail":{"dtype":"U8","shape":[2],"data_offsets":[5,7]}})",
            10);
  std::string msg = open_error(dir / "o.safetensors");
  INFO(msg);
  CHECK(has(msg, "'big'"));
  CHECK(has(msg, "overlap"));
}

TEST_CASE("negative dimension is rejected") {
  TempDir dir;
  write_raw(dir / "n.safetensors", R"({"w":{"dtype":"U8","shape":[2,-3],"data_offsets":[0,0]}})",
            0);
  std::string msg = open_error(dir / "n.safetensors");
  INFO(msg);
  CHECK(has(msg, "tensor 'w'"));
  CHECK(has(msg, "negative dimension -3"));
}

TEST_CASE("shape whose element count overflows 64 bits is rejected") {
  TempDir dir;
  write_raw(dir / "v.safetensors",
            R"({"w":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", 0);
  std::string msg = open_error(dir / "v.safetensors");
  INFO(msg);
  CHECK(has(msg, "tensor 'w'"));
  CHECK(has(msg, "overflow"));
}

TEST_CASE("shape whose byte count overflows 64 bits is rejected") {
  TempDir dir;
  write_raw(dir / "v.safetensors",
            R"({"w":{"dtype":"I64","shape":[2305843009213693952],"data_offsets":[0,0]}})", 0);
  CHECK(has(open_error(dir / "v.safetensors"), "overflow"));
}

TEST_CASE("rank above the limit is rejected") {
  TempDir dir;
  write_raw(dir / "k.safetensors",
            R"({"w":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,1]}})", 1);
  CHECK(has(open_error(dir / "k.safetensors"), "rank 9 exceeds the limit 8"));
}

TEST_CASE("__metadata__ must be an object of strings") {
  TempDir dir;
  write_raw(dir / "m.safetensors", R"({"__metadata__":{"format":1}})", 0);
  std::string msg = open_error(dir / "m.safetensors");
  INFO(msg);
  CHECK(has(msg, "\"__metadata__\" key \"format\": expected a string, found integer"));
  write_raw(dir / "m2.safetensors", R"({"__metadata__":["pt"]})", 0);
  CHECK(has(open_error(dir / "m2.safetensors"), "expected an object of strings, found array"));
}

TEST_CASE("a file truncated or rewritten while it is read: zeros instead of a signal, then an error naming it") {
  TempDir dir;
  const std::size_t n = 64 * 1024;  // sixteen pages
  const fs::path path = dir / "t.safetensors";
  write_raw(path, R"({"w":{"dtype":"U8","shape":[65536],"data_offsets":[0,65536]}})", n);
  {
    auto f = SafetensorsFile::open(path);
    CHECK_NOTHROW(f->check_unchanged());
    fs::resize_file(path, 4096);  // another process cuts the shard short
    const std::byte* p = f->tensors().at("w").data;
    unsigned sum = 0;
    for (std::size_t i = 0; i < n; i += 512) sum += static_cast<unsigned>(p[i]);  // past the new end: no SIGBUS
    CHECK(sum > 0);  // the bytes still in the file are read as they are
    std::string e;
    try {
      f->check_unchanged();
    } catch (const Error& err) {
      e = err.what();
    }
    INFO(e);
    CHECK(has(e, "safetensors file '" + path.string() + "' changed while it was read"));
    CHECK(has(e, "it was truncated while being read"));
  }
  {
    write_raw(path, R"({"w":{"dtype":"U8","shape":[65536],"data_offsets":[0,65536]}})", n);
    auto f = SafetensorsFile::open(path);
    ::usleep(20000);
    std::fstream out(path, std::ios::in | std::ios::out | std::ios::binary);  // rewritten in place, same size
    out.seekp(200);
    out.write("changed", 7);
    out.close();
    CHECK_THROWS_WITH_AS(f->check_unchanged(), doctest::Contains("it was written"), Error);
  }
  {
    write_raw(path, R"({"w":{"dtype":"U8","shape":[65536],"data_offsets":[0,65536]}})", n);
    auto f = SafetensorsFile::open(path);
    write_raw(dir / "new.safetensors", R"({"v":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", 4);
    fs::rename(dir / "new.safetensors", path);  // the name now points at another file; the mapped one is intact
    CHECK_NOTHROW(f->check_unchanged());
    CHECK(f->tensors().at("w").data[100] == std::byte{0x11});
  }
}
