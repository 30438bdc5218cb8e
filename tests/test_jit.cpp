// The JIT service and the CUDA driver shim. Everything but loading and launching runs
// without a GPU: NVRTC compiles for sm_90a, sm_89 and sm_80 on any machine. GPU cases skip,
// saying so, where there is no driver.
#include <moeq/cuda_driver.hpp>
#include <moeq/dtype.hpp>
#include <moeq/error.hpp>
#include <moeq/host.hpp>
#include <moeq/jit.hpp>
#include <moeq/jit_cache.hpp>
#include <moeq/jit_compiler.hpp>
#include <moeq/jit_include_scanner.hpp>
#include <moeq/jit_key.hpp>
#include <moeq/digest.hpp>
#include <moeq/sdk/triton.hpp>

#include <doctest/doctest.h>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace moeq;

namespace {

// A fresh directory, removed with everything in it at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "moeq-jit-test-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// Sets (or unsets, with nullptr) an environment variable for the scope.
struct ScopedEnv {
  std::string name;
  std::optional<std::string> old;
  ScopedEnv(const char* n, const char* value) : name(n) {
    if (const char* v = std::getenv(n)) old = v;
    if (value)
      ::setenv(n, value, 1);
    else
      ::unsetenv(n);
  }
  ~ScopedEnv() {
    if (old)
      ::setenv(name.c_str(), old->c_str(), 1);
    else
      ::unsetenv(name.c_str());
  }
};

constexpr const char* kDotHeader = R"(#pragma once
#define MOEQ_TEST_SCALE 1.0f
)";

// A real kernel: the dot product of two fp8 e4m3 vectors, one block, a shared-memory tree.
constexpr const char* kDotSource = R"(#include <cuda_fp8.h>
#include "dot_config.cuh"

extern "C" __global__ void fp8_dot(const __nv_fp8_e4m3* a, const __nv_fp8_e4m3* b, float* out, int n) {
  __shared__ float partial[256];
  float acc = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) acc += float(a[i]) * float(b[i]);
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = partial[0] * MOEQ_TEST_SCALE;
}
)";

jit::Request dot_request(const std::string& arch) {
  jit::Request r;
  r.name = "fp8_dot";
  r.source = kDotSource;
  r.headers = {{"dot_config.cuh", kDotHeader}};
  r.arch = arch;
  r.plugin_name = "test_plugin";
  r.plugin_version = "0.1.0";
  return r;
}

jit::Config config_in(const fs::path& dir, unsigned threads = 0) {
  jit::Config c;
  c.cache_dir = dir;
  c.threads = threads;
  c.cuda_include_dirs = jit::cuda_include_dirs();
  return c;
}

bool skip_without_nvrtc() {
  if (jit::compiler_available()) return false;
  MESSAGE("skipped: this build has no NVRTC (no CUDA toolkit at build time)");
  return true;
}

bool skip_without_driver() {
  if (cuda::available()) return false;
  MESSAGE("skipped: " << cuda::unavailable_reason());
  return true;
}

// The SM number an NVIDIA CUBIN's ELF header declares.
int cubin_sm(const std::vector<uint8_t>& elf) {
  REQUIRE(elf.size() > 52);
  CHECK(std::memcmp(elf.data(), "\x7f" "ELF", 4) == 0);
  const uint16_t machine = static_cast<uint16_t>(elf[18] | (elf[19] << 8));
  CHECK(machine == 190);  // EM_CUDA
  const bool elf64 = elf[4] == 2;
  const size_t flags_at = elf64 ? 48 : 36;
  uint32_t flags = 0;
  for (int i = 0; i < 4; ++i) flags |= uint32_t{elf[flags_at + i]} << (8 * i);
  // NOTE: CUDA's ELF ABI version 8 (CUDA 12.8+) moved the SM number from bits 0-7 to 8-15.
  return elf[8] >= 8 ? static_cast<int>((flags >> 8) & 0xff) : static_cast<int>(flags & 0xff);
}

bool contains(const std::vector<uint8_t>& bytes, const std::string& text) {
  return std::search(bytes.begin(), bytes.end(), text.begin(), text.end()) != bytes.end();
}

std::vector<fs::path> files_under(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) out.push_back(e.path());
  return out;
}

std::vector<uint8_t> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const fs::path& p, const std::vector<uint8_t>& b) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

Digest digest_of_hex(const std::string& hex) {
  Digest d{};
  REQUIRE(hex.size() == 2 * d.size());
  for (size_t i = 0; i < d.size(); ++i) d[i] = static_cast<uint8_t>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
  return d;
}

// Every entry file under a cache root must decode against the key its name carries.
size_t check_every_entry_valid(const fs::path& root) {
  size_t n = 0;
  for (const fs::path& p : files_under(root)) {
    CAPTURE(p.string());
    CHECK(p.filename().string().rfind(".tmp.", 0) != 0);  // no temp file left behind
    if (p.extension() != ".cubin" && p.extension() != ".ptx") continue;
    const jit::CacheRead r = jit::decode_entry(digest_of_hex(p.stem().string()), read_bytes(p));
    CHECK(r.state == jit::EntryState::hit);
    ++n;
  }
  return n;
}

// Runs body(i) in `n` forked processes at once and checks that each exited 0. The body runs
// in the child: no doctest macros there; its return value is the verdict.
template <class Body>
void in_processes(int n, Body body) {
  std::vector<pid_t> children;
  for (int i = 0; i < n; ++i) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      int code = 0;
      try {
        code = body(i);
      } catch (...) {
        code = 100;
      }
      ::_exit(code);
    }
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
}

}  // namespace

// ------------------------------------------------------------------------ hashing, scanning

TEST_CASE("digests are XXH3-128 in canonical form, and field() keeps boundaries") {
  CHECK(to_hex(digest("")) == "99aa06d3014798d86001c324468d497f");
  CHECK(to_hex(digest("abc")) == "06b05ab6733a618578af5f94892f3950");
  Digester h;  // streaming in uneven pieces gives the one-shot digest
  const std::string text(100000, 'a');
  for (size_t at = 0; at < text.size(); at += 997) h.update(std::string_view(text).substr(at, 997));
  CHECK(h.finish() == digest(text));
  CHECK(Digester().field("ab").field("c").finish() != Digester().field("a").field("bc").finish());
}

TEST_CASE("find_includes sees quoted, angled and spaced directives and skips include_next") {
  const auto d = jit::find_includes(
      "#include <cuda_fp8.h>\n"
      "  #  include \"a/b.cuh\" // note\n"
      "#include_next <x.h>\n"
      "#define X 1\n"
      "#include SOME_MACRO\n"
      "int include = 0;\n");
  REQUIRE(d.size() == 3);
  CHECK(d[0] == jit::IncludeDirective{"cuda_fp8.h", true});
  CHECK(d[1] == jit::IncludeDirective{"a/b.cuh", false});
  CHECK(d[2].name == "macro:SOME_MACRO");
  CHECK(jit::include_dirs_in({"-I/a", "-I", "/b", "--include-path=/c", "-DX"}) ==
        std::vector<std::string>{"/a", "/b", "/c"});
}

TEST_CASE("arch_for gives sm_90a on Hopper and plain names before it, check_arch refuses virtual archs") {
  CHECK(jit::arch_for(9, 0) == "sm_90a");
  CHECK(jit::arch_for(10, 0) == "sm_100a");
  CHECK(jit::arch_for(8, 9) == "sm_89");
  CHECK(jit::arch_for(8, 0) == "sm_80");
  for (const char* ok : {"sm_90a", "sm_89", "sm_80", "sm_100f", "sm_120a"}) CHECK_NOTHROW(jit::check_arch(ok));
  for (const char* bad : {"compute_90", "sm_", "sm_9", "sm_9a0", "90a", "sm_90a;rm", "sm_90/../x", ""}) {
    CAPTURE(bad);
    CHECK_THROWS_AS(jit::check_arch(bad), Error);
  }
}

TEST_CASE("the service's options put arch, standard and device default first and the caller's last") {
  jit::Request r = dot_request("sm_90a");
  r.options = {"-DBLOCK=64", "-lineinfo"};
  const auto opts = jit::compile_options(r, {"/inc"});
  REQUIRE(opts.size() == 6);
  CHECK(opts[0] == "--gpu-architecture=sm_90a");
  CHECK(opts[1] == "-std=c++17");
  CHECK(opts[2] == "-default-device");
  CHECK(opts[3] == "-I/inc");
  CHECK(opts[4] == "-DBLOCK=64");
  CHECK(opts[5] == "-lineinfo");
  r.options = {"-std=c++20"};
  const auto opts20 = jit::compile_options(r, {});
  CHECK(std::count(opts20.begin(), opts20.end(), "-std=c++17") == 0);
  CHECK(opts20.back() == "-std=c++20");
}

TEST_CASE("MOEQ_CACHE_DIR picks the cache root, the default is ~/.cache/moeq, 'off' disables it") {
  ScopedEnv xdg("XDG_CACHE_HOME", nullptr);
  {
    ScopedEnv dir("MOEQ_CACHE_DIR", nullptr);
    ScopedEnv home("HOME", "/home/someone");
    CHECK(jit::Config::from_env().cache_dir == fs::path("/home/someone/.cache/moeq"));
    ScopedEnv xdg2("XDG_CACHE_HOME", "/xdg");
    CHECK(jit::Config::from_env().cache_dir == fs::path("/xdg/moeq"));
  }
  {
    ScopedEnv dir("MOEQ_CACHE_DIR", "/somewhere/else");
    CHECK(jit::Config::from_env().cache_dir == fs::path("/somewhere/else"));
  }
  {
    ScopedEnv dir("MOEQ_CACHE_DIR", "off");
    CHECK(jit::Config::from_env().cache_dir.empty());
  }
  {
    ScopedEnv threads("MOEQ_JIT_THREADS", "three");
    CHECK_THROWS_WITH_AS(jit::Config::from_env(), doctest::Contains("MOEQ_JIT_THREADS"), Error);
  }
  {
    ScopedEnv split("MOEQ_JIT_SPLIT", nullptr);
    CHECK(jit::Config::from_env().split_threads == 0);  // the service makes it one per core
  }
  {
    ScopedEnv split("MOEQ_JIT_SPLIT", "4");
    CHECK(jit::Config::from_env().split_threads == 4);
  }
  for (const char* bad : {"0", "257", "two", "4x", "-1"}) {
    CAPTURE(bad);
    ScopedEnv split("MOEQ_JIT_SPLIT", bad);
    CHECK_THROWS_WITH_AS(jit::Config::from_env(), doctest::Contains("MOEQ_JIT_SPLIT must be a number from 1 to 256"),
                         Error);
  }
}

// --------------------------------------------------------------------------- cache entries

TEST_CASE("a cache entry round-trips, and every kind of damage reads as corrupt, never a crash") {
  const Digest key = digest("some key");
  const std::vector<uint8_t> payload = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  const std::vector<uint8_t> good = jit::encode_entry(key, payload);
  CHECK(good.size() == jit::kEntryHeaderBytes + payload.size());
  const jit::CacheRead ok = jit::decode_entry(key, good);
  CHECK(ok.state == jit::EntryState::hit);
  CHECK(ok.payload == payload);

  auto damaged = [&](auto&& edit) {
    std::vector<uint8_t> b = good;
    edit(b);
    return jit::decode_entry(key, b);
  };
  CHECK(damaged([](auto& b) { b[0] = 'X'; }).why == "bad magic");
  CHECK(damaged([](auto& b) { b[8] = 99; }).why.find("entry format 99") != std::string::npos);
  CHECK(damaged([](auto& b) { b[20] ^= 1; }).why == "holds another key");
  CHECK(damaged([](auto& b) { b.back() ^= 0x40; }).why == "payload checksum mismatch");
  CHECK(damaged([](auto& b) { b.pop_back(); }).why.find("header says 9") != std::string::npos);
  CHECK(damaged([](auto& b) { b.push_back(0); }).state == jit::EntryState::corrupt);
  CHECK(damaged([](auto& b) { b.resize(10); }).why.find("truncated header") != std::string::npos);
  CHECK(damaged([](auto& b) { b.clear(); }).state == jit::EntryState::corrupt);
  CHECK(jit::decode_entry(digest("another key"), good).state == jit::EntryState::corrupt);
}

TEST_CASE("the disk cache publishes entries under <root>/jit/v<schema>/<arch>/<xx>/<key>.cubin (or .ptx), no temp file") {
  TempDir tmp;
  const jit::JitCache cache(tmp.path);
  const Digest key = digest("k");
  CHECK(cache.load("sm_90a", key).state == jit::EntryState::absent);
  const std::vector<uint8_t> payload(1000, 7);
  CHECK(cache.store("sm_90a", key, payload) == "");
  const fs::path p = cache.entry_path("sm_90a", key);
  const fs::path dir = tmp.path / "jit" / ("v" + std::to_string(jit::kKeySchema)) / "sm_90a" / to_hex(key).substr(0, 2);
  CHECK(p == dir / (to_hex(key) + ".cubin"));
  CHECK(cache.entry_path("sm_90a", key, jit::Image::ptx) == dir / (to_hex(key) + ".ptx"));
  CHECK(cache.load("sm_90a", key, jit::Image::ptx).state == jit::EntryState::absent);
  CHECK(fs::exists(p));
  const jit::CacheRead r = cache.load("sm_90a", key);
  CHECK(r.state == jit::EntryState::hit);
  CHECK(r.payload == payload);
  CHECK(check_every_entry_valid(tmp.path) == 1);
}

TEST_CASE("a cache that cannot be written reports why and does not throw") {
  TempDir tmp;
  const fs::path blocker = tmp.path / "file";
  write_bytes(blocker, {1});
  const jit::JitCache cache(blocker / "under-a-file");
  const std::vector<uint8_t> payload(3, 1);
  std::string why;
  CHECK_NOTHROW(why = cache.store("sm_80", digest("k"), payload));
  CHECK(why.find("cannot create") != std::string::npos);
  CHECK(cache.load("sm_80", digest("k")).state == jit::EntryState::absent);
}

TEST_CASE("processes writing and reading one key at once only ever see whole entries") {
  TempDir tmp;
  const Digest key = digest("contended");
  in_processes(6, [&](int) {
    const jit::JitCache cache(tmp.path);
    std::vector<uint8_t> payload(200000);
    for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<uint8_t>(i * 31 + 7);
    for (int round = 0; round < 40; ++round) {
      if (!cache.store("sm_90a", key, payload).empty()) return 1;
      const jit::CacheRead r = cache.load("sm_90a", key);
      if (r.state == jit::EntryState::corrupt || (r.state == jit::EntryState::hit && r.payload != payload)) return 2;
    }
    return 0;
  });
  CHECK(check_every_entry_valid(tmp.path) == 1);
}

// --------------------------------------------------------------------------- cache trust

namespace {

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// The host log's lines for one scope.
struct LogLines {
  std::vector<std::string> lines;
  host::LogSink previous;
  LogLines() {
    previous = host::set_log_sink([this](moeq_log_level, const std::string& source, const std::string& m) {
      lines.push_back(source + ": " + m);
    });
  }
  ~LogLines() { host::set_log_sink(previous); }
  bool contain(const std::string& part) const {
    return std::any_of(lines.begin(), lines.end(), [&](const std::string& l) { return has(l, part); });
  }
};

}  // namespace

TEST_CASE("a JIT cache directory others may write is neither read nor written") {
  TempDir tmp;
  const fs::path root = tmp.path / "cache";
  const Digest key = digest("planted");
  const std::vector<uint8_t> payload(64, 9);
  REQUIRE(jit::JitCache(root).store("sm_90a", key, payload) == "");
  REQUIRE(jit::JitCache(root).load("sm_90a", key).state == jit::EntryState::hit);
  fs::permissions(root, fs::perms::all);  // 0777: anyone could have put this CUBIN there
  const jit::JitCache cache(root);
  CHECK(has(cache.trust_problem(), "JIT cache directory " + root.string() +
                                       " is writable by other users (mode 0777); expected write permission for its owner only"));
  const jit::CacheRead r = cache.load("sm_90a", key);
  CHECK(r.state == jit::EntryState::untrusted);
  CHECK(r.payload.empty());
  CHECK(has(r.why, "JIT cache directory " + root.string() + " is writable by other users"));
  const Digest other = digest("not written");
  CHECK(has(cache.store("sm_90a", other, payload), "is writable by other users (mode 0777)"));
  CHECK_FALSE(fs::exists(cache.entry_path("sm_90a", other)));
}

TEST_CASE("a JIT cache below a group-writable directory, or owned by another user, is refused, a sticky one above is fine") {
  TempDir tmp;
  const fs::path shared = tmp.path / "shared", root = shared / "cache";
  fs::create_directories(root);
  const Digest key = digest("k");
  const std::vector<uint8_t> payload(16, 3);
  fs::permissions(shared, fs::perms::owner_all | fs::perms::group_all);  // 0770: the group may swap cache/
  {
    const jit::JitCache cache(root);
    CHECK(has(cache.trust_problem(), "directory " + shared.string() +
                                         " above the JIT cache is writable by its group without the sticky bit (mode 0770)"));
    CHECK(has(cache.store("sm_80", key, payload), "above the JIT cache is writable by its group"));
    CHECK_FALSE(fs::exists(cache.entry_path("sm_80", key)));
  }
  fs::permissions(shared, fs::perms::all | fs::perms::sticky_bit);  // 1777, as /tmp
  {
    const jit::JitCache cache(root);
    CHECK(cache.trust_problem() == "");
    CHECK(cache.store("sm_80", key, payload) == "");
    CHECK(cache.load("sm_80", key).state == jit::EntryState::hit);
  }
  const uint32_t me = static_cast<uint32_t>(::geteuid());
  if (me == 0) {
    REQUIRE(::lchown(root.c_str(), 65534, 65534) == 0);
    const jit::JitCache cache(root);
    CHECK(has(cache.trust_problem(),
              "JIT cache directory " + root.string() + " is owned by uid 65534, not by root or this user (uid 0)"));
    CHECK(cache.load("sm_80", key).state == jit::EntryState::untrusted);
  } else {
    MESSAGE("not root: the cache cannot be chowned to another user; checking with owner uid " << me + 1);
    const jit::JitCache cache(root, me + 1);
    CHECK(has(cache.trust_problem(), "is owned by uid " + std::to_string(me) + ", not by root or this user (uid " +
                                         std::to_string(me + 1) + ")"));
    CHECK(cache.load("sm_80", key).state == jit::EntryState::untrusted);
  }
}

TEST_CASE("a JIT cache entry others may write, below a directory others may write, or that is a symlink, is not read") {
  TempDir tmp;
  const jit::JitCache cache(tmp.path);
  const Digest key = digest("entry");
  const std::vector<uint8_t> payload(32, 5);
  REQUIRE(cache.store("sm_90a", key, payload) == "");
  const fs::path entry = cache.entry_path("sm_90a", key);
  fs::permissions(entry, fs::perms::group_write, fs::perm_options::add);
  jit::CacheRead r = cache.load("sm_90a", key);
  CHECK(r.state == jit::EntryState::untrusted);
  CHECK(has(r.why, "JIT cache entry " + entry.string() + " is writable by its group"));
  fs::permissions(entry, fs::perms::group_write, fs::perm_options::remove);
  CHECK(cache.load("sm_90a", key).state == jit::EntryState::hit);

  fs::permissions(entry.parent_path(), fs::perms::others_write, fs::perm_options::add);
  r = cache.load("sm_90a", key);
  CHECK(r.state == jit::EntryState::untrusted);
  CHECK(has(r.why, "JIT cache directory " + entry.parent_path().string() + " is writable by other users"));
  fs::permissions(entry.parent_path(), fs::perms::others_write, fs::perm_options::remove);

  fs::rename(entry, tmp.path / "elsewhere.cubin");
  fs::create_symlink(tmp.path / "elsewhere.cubin", entry);
  r = cache.load("sm_90a", key);
  CHECK(r.state == jit::EntryState::untrusted);
  CHECK(has(r.why, "JIT cache entry " + entry.string() + " is a symbolic link"));
}

TEST_CASE("the cache creates its directories writable by their owner only, whatever the umask") {
  TempDir tmp;
  const jit::JitCache cache(tmp.path / "fresh");
  const Digest key = digest("umask");
  const mode_t old = ::umask(0);  // create_directories would make 0777 directories now
  const std::string why = cache.store("sm_89", key, std::vector<uint8_t>(8, 1));
  ::umask(old);
  REQUIRE(why == "");
  for (fs::path p = cache.entry_path("sm_89", key).parent_path(); p != tmp.path; p = p.parent_path()) {
    CAPTURE(p.string());
    const fs::perms perms = fs::status(p).permissions();
    CHECK((perms & (fs::perms::group_write | fs::perms::others_write)) == fs::perms::none);
  }
  CHECK(cache.load("sm_89", key).state == jit::EntryState::hit);
}

TEST_CASE("the JIT service does not use a cache directory others may write, says why, and compiles without it") {
  TempDir tmp;
  const fs::path root = tmp.path / "cache";
  fs::create_directories(root);
  fs::permissions(root, fs::perms::all);
  std::optional<jit::JitService> service;
  {
    LogLines log;
    service.emplace(config_in(root));
    CHECK(log.contain("jit: not using the JIT cache, kernels are compiled without it: JIT cache directory " +
                      root.string() + " is writable by other users (mode 0777)"));
  }
  if (skip_without_nvrtc()) return;
  const jit::Kernel k = service->compile(dot_request("sm_80"));
  CHECK(k.origin == jit::Origin::compiled);
  CHECK(fs::is_empty(root));
  CHECK(service->stats().store_failures == 0);  // no cache to fail: nothing was tried
}

// --------------------------------------------------------------------------- compiling

TEST_CASE("NVRTC finds the CUDA toolkit headers (cuda_fp8.h)") {
  if (skip_without_nvrtc()) return;
  const auto dirs = jit::cuda_include_dirs();
  bool found = false;
  for (const auto& d : dirs) found = found || fs::exists(fs::path(d) / "cuda_fp8.h");
  CHECK_MESSAGE(found, "no cuda_fp8.h in any of the include dirs; set MOEQ_CUDA_INCLUDE");
  CHECK(!jit::compiler_version().empty());
  {
    ScopedEnv env("MOEQ_CUDA_INCLUDE", dirs.empty() ? "/nonexistent" : dirs.front().c_str());
    CHECK(jit::cuda_include_dirs().front() == dirs.front());
  }
}

TEST_CASE("an fp8 e4m3 dot kernel compiles to an ELF CUBIN for sm_90a, sm_89 and sm_80, each its own arch") {
  if (skip_without_nvrtc()) return;
  TempDir tmp;
  jit::JitService service(config_in(tmp.path));
  const std::vector<jit::Request> reqs = {dot_request("sm_90a"), dot_request("sm_89"), dot_request("sm_80")};
  const std::vector<jit::Kernel> ks = service.compile(reqs);
  REQUIRE(ks.size() == 3);
  CHECK(cubin_sm(*ks[0].cubin) == 90);
  CHECK(cubin_sm(*ks[1].cubin) == 89);
  CHECK(cubin_sm(*ks[2].cubin) == 80);
  CHECK(contains(*ks[0].cubin, "sm_90a"));  // the 'a' target, recorded in the toolkit note
  CHECK(contains(*ks[0].cubin, "fp8_dot"));
  CHECK(*ks[0].cubin != *ks[1].cubin);
  CHECK(*ks[1].cubin != *ks[2].cubin);
  CHECK(ks[0].key != ks[1].key);
  for (const auto& k : ks) {
    CHECK(k.origin == jit::Origin::compiled);
    CHECK(k.milliseconds > 0);
  }
  const jit::Stats st = service.stats();
  CHECK(st.compiled == 3);
  CHECK(st.disk_hits == 0);
  CHECK(check_every_entry_valid(tmp.path) == 3);
}

TEST_CASE("the second compile is a cache hit: from memory in the process, from disk in a new one") {
  if (skip_without_nvrtc()) return;
  TempDir tmp;
  std::vector<uint8_t> first;
  {
    jit::JitService service(config_in(tmp.path));
    const jit::Kernel a = service.compile(dot_request("sm_90a"));
    const jit::Kernel b = service.compile(dot_request("sm_90a"));
    CHECK(a.origin == jit::Origin::compiled);
    CHECK(b.origin == jit::Origin::memory);
    CHECK(a.cubin == b.cubin);  // the same bytes, shared
    CHECK(service.stats().compiled == 1);
    CHECK(service.stats().memory_hits == 1);
    first = *a.cubin;
  }
  jit::JitService fresh(config_in(tmp.path));
  const jit::Kernel c = fresh.compile(dot_request("sm_90a"));
  CHECK(c.origin == jit::Origin::disk_cache);
  CHECK(*c.cubin == first);
  const jit::Stats st = fresh.stats();
  CHECK(st.disk_hits == 1);
  CHECK(st.compiled == 0);
  MESSAGE("warm disk hit: " << c.milliseconds << " ms");
}

// NVRTC's split compile changes how long a compile takes, not what it builds: the key is the
// same with any split, a split service reads what an unsplit one stored, and its own compile
// (a cache left off) is a CUBIN for the same arch with the same kernel in it.
TEST_CASE("the split compile is left out of the key, and a split compile builds the same kernel") {
  if (skip_without_nvrtc()) return;
  TempDir tmp;
  jit::Config one = config_in(tmp.path), eight = config_in(tmp.path);
  one.split_threads = 1;
  eight.split_threads = 8;
  jit::JitService a(one), b(eight);
  CHECK(a.key(dot_request("sm_90a")) == b.key(dot_request("sm_90a")));
  const jit::Kernel stored = a.compile(dot_request("sm_90a"));
  CHECK(stored.origin == jit::Origin::compiled);
  const jit::Kernel read = b.compile(dot_request("sm_90a"));
  CHECK(read.origin == jit::Origin::disk_cache);
  CHECK(*read.cubin == *stored.cubin);
  jit::Config uncached = eight;
  uncached.cache_dir.clear();
  jit::JitService c(uncached);
  const jit::Kernel split = c.compile(dot_request("sm_90a"));
  CHECK(split.origin == jit::Origin::compiled);
  REQUIRE(split.cubin->size() > 4);
  const std::string text(split.cubin->begin(), split.cubin->end());
  CHECK(text.rfind("\x7f" "ELF", 0) == 0);
  CHECK(text.find("fp8_dot") != std::string::npos);
}

TEST_CASE("the key changes with a header's contents, an option, the arch, the source, the plugin version") {
  if (skip_without_nvrtc()) return;
  TempDir tmp;
  jit::JitService service(config_in(tmp.path));
  const jit::Request base = dot_request("sm_90a");
  const std::string k0 = service.key(base);
  CHECK(k0.size() == 32);
  CHECK(service.key(base) == k0);  // deterministic

  std::map<std::string, jit::Request> variants;
  variants["header contents"] = base;
  variants["header contents"].headers[0].contents = "#pragma once\n#define MOEQ_TEST_SCALE 2.0f\n";
  variants["option"] = base;
  variants["option"].options = {"-DUNUSED=1"};
  variants["arch"] = dot_request("sm_89");
  variants["source"] = base;
  variants["source"].source += "\n// a comment\n";
  variants["plugin version"] = base;
  variants["plugin version"].plugin_version = "0.1.1";
  variants["plugin name"] = base;
  variants["plugin name"].plugin_name = "other_plugin";
  variants["extra header"] = base;
  variants["extra header"].headers.push_back({"unused.cuh", "// nothing"});
  for (const auto& [what, req] : variants) {
    CAPTURE(what);
    CHECK(service.key(req) != k0);
  }
  // Header order does not matter: NVRTC looks them up by name.
  jit::Request two = variants["extra header"], swapped = two;
  std::swap(swapped.headers[0], swapped.headers[1]);
  CHECK(service.key(two) == service.key(swapped));
}

TEST_CASE("the key covers headers found on disk: toolkit headers and files under a caller's -I dir") {
  if (skip_without_nvrtc()) return;
  TempDir tmp;
  const fs::path inc = tmp.path / "inc";
  fs::create_directories(inc / "sub");
  std::ofstream(inc / "outer.cuh") << "#pragma once\n#include \"sub/inner.cuh\"\n";
  std::ofstream(inc / "sub" / "inner.cuh") << "#define INNER 1\n";

  jit::Request r = dot_request("sm_90a");
  r.source = std::string("#include <outer.cuh>\n") + r.source;
  r.options = {"-I" + inc.string()};

  jit::IncludeScanner scanner;
  jit::JitService service(config_in(tmp.path / "cache"));
  const auto opts = service.options(r);
  const jit::IncludeScan scan = scanner.scan(r, jit::include_dirs_in(opts));
  std::vector<std::string> paths;
  for (const auto& f : scan.files) paths.push_back(fs::path(f.path).filename().string());
  auto has = [&](const std::string& n) { return std::find(paths.begin(), paths.end(), n) != paths.end(); };
  CHECK(has("cuda_fp8.h"));
  CHECK(has("cuda_fp8.hpp"));  // reached through cuda_fp8.h
  CHECK(has("outer.cuh"));
  CHECK(has("inner.cuh"));  // quoted, relative to outer.cuh's directory
  CHECK(scan.headers_reached == std::vector<std::string>{"dot_config.cuh"});

  const std::string before = service.key(r);
  std::ofstream(inc / "sub" / "inner.cuh") << "#define INNER 2  /* edited */\n";
  CHECK(service.key(r) != before);
  // ...and it still compiles, through the caller's -I.
  CHECK(service.compile(r).cubin->size() > 0);
}

TEST_CASE("a corrupt cache entry is a miss, is recompiled, and is replaced by a valid one") {
  if (skip_without_nvrtc()) return;
  TempDir tmp;
  fs::path entry;
  std::vector<uint8_t> cubin;
  {
    jit::JitService service(config_in(tmp.path));
    const jit::Kernel k = service.compile(dot_request("sm_89"));
    entry = jit::JitCache(tmp.path).entry_path("sm_89", digest_of_hex(k.key));
    cubin = *k.cubin;
  }
  std::vector<uint8_t> bytes = read_bytes(entry);
  bytes[bytes.size() / 2] ^= 0xff;  // one flipped byte inside the CUBIN
  write_bytes(entry, bytes);

  jit::JitService service(config_in(tmp.path));
  const jit::Kernel k = service.compile(dot_request("sm_89"));
  CHECK(k.origin == jit::Origin::compiled);
  CHECK(*k.cubin == cubin);
  CHECK(service.stats().corrupt_entries == 1);
  CHECK(read_bytes(entry) == jit::encode_entry(digest_of_hex(k.key), cubin));  // rewritten whole

  jit::JitService again(config_in(tmp.path));
  CHECK(again.compile(dot_request("sm_89")).origin == jit::Origin::disk_cache);
}

TEST_CASE("a truncated cache entry is a miss and is rewritten") {
  if (skip_without_nvrtc()) return;
  TempDir tmp;
  fs::path entry;
  {
    jit::JitService service(config_in(tmp.path));
    const jit::Kernel k = service.compile(dot_request("sm_80"));
    entry = jit::JitCache(tmp.path).entry_path("sm_80", digest_of_hex(k.key));
  }
  for (size_t keep : {size_t{0}, size_t{40}, size_t{200}}) {
    CAPTURE(keep);
    fs::resize_file(entry, keep);
    jit::JitService service(config_in(tmp.path));
    const jit::Kernel k = service.compile(dot_request("sm_80"));
    CHECK(k.origin == jit::Origin::compiled);
    CHECK(service.stats().corrupt_entries == 1);
    CHECK(check_every_entry_valid(tmp.path) == 1);
  }
}

TEST_CASE("several processes compiling the same and different kernels into one cache all succeed") {
  if (skip_without_nvrtc()) return;
  TempDir tmp;
  constexpr int kProcesses = 4;
  in_processes(kProcesses, [&](int p) {
    jit::JitService service(config_in(tmp.path, 2));
    jit::Request own = dot_request("sm_90a");
    own.options = {"-DMOEQ_VARIANT=" + std::to_string(p)};
    const std::vector<jit::Request> reqs = {dot_request("sm_90a"), own};
    const auto ks = service.compile(reqs);
    return ks.size() == 2 && !ks[0].cubin->empty() && !ks[1].cubin->empty() ? 0 : 3;
  });
  CHECK(check_every_entry_valid(tmp.path) == 1 + kProcesses);
  // Every one of them is now a disk hit.
  jit::JitService service(config_in(tmp.path));
  CHECK(service.compile(dot_request("sm_90a")).origin == jit::Origin::disk_cache);
}

TEST_CASE("a kernel that does not compile comes back as INVALID_ARGUMENT carrying NVRTC's log line") {
  if (skip_without_nvrtc()) return;
  TempDir tmp;
  jit::JitService service(config_in(tmp.path));
  jit::Request r = dot_request("sm_90a");
  r.name = "broken_kernel";
  r.source = "extern \"C\" __global__ void k(float* x) { x[0] = undefined_thing; }\n";
  try {
    service.compile(r);
    FAIL("a broken kernel compiled");
  } catch (const Error& e) {
    const std::string m = e.what();
    CAPTURE(m);
    CHECK(e.code() == MOEQ_STATUS_CODE_INVALID_ARGUMENT);
    CHECK(m.find("broken_kernel") != std::string::npos);
    CHECK(m.find("test_plugin 0.1.0") != std::string::npos);
    CHECK(m.find("broken_kernel.cu(1): error") != std::string::npos);  // NVRTC's own log line
    CHECK(m.find("undefined_thing") != std::string::npos);
    CHECK(m.find("--gpu-architecture=sm_90a") != std::string::npos);  // the options, to reproduce
  }
  CHECK(service.stats().failed == 1);
  CHECK(files_under(tmp.path).empty());  // nothing cached
}

TEST_CASE("a batch compiles in parallel, keeps request order and names every kernel set that failed") {
  if (skip_without_nvrtc()) return;
  TempDir tmp;
  jit::JitService service(config_in(tmp.path, 4));
  std::vector<jit::Request> reqs;
  for (int i = 0; i < 4; ++i) {
    jit::Request r = dot_request("sm_90a");
    r.name = "dot_" + std::to_string(i);
    r.options = {"-DMOEQ_VARIANT=" + std::to_string(i)};
    reqs.push_back(r);
  }
  const auto ks = service.compile(reqs);
  REQUIRE(ks.size() == 4);
  for (int i = 0; i < 4; ++i) CHECK(ks[i].name == "dot_" + std::to_string(i));
  CHECK(service.stats().compiled == 4);

  reqs[1].source = "this is not C++";
  reqs[3].source = "neither is this";
  reqs[2].options.push_back("-DANOTHER=1");
  try {
    service.compile(reqs);
    FAIL("a batch with broken sources compiled");
  } catch (const Error& e) {
    const std::string m = e.what();
    CAPTURE(m);
    CHECK(m.find("2 of 4 kernel sets failed") != std::string::npos);
    CHECK(m.find("'dot_1'") != std::string::npos);
    CHECK(m.find("'dot_3'") != std::string::npos);
  }
  const jit::Stats st = service.stats();
  CHECK(st.compiled == 5);  // dot_2's new variant still compiled; dot_0 came from memory
  CHECK(st.failed == 2);
  CHECK(st.memory_hits == 1);
}

TEST_CASE("a bad arch is refused before NVRTC runs") {
  TempDir tmp;
  jit::JitService service(config_in(tmp.path));
  CHECK_THROWS_WITH_AS(service.compile(dot_request("compute_90")), doctest::Contains("sm_90a"), Error);
}

// --------------------------------------------------------------------------- ABI slot

TEST_CASE("the host table's jit_compile returns a CUBIN, and loading without a driver says 'no CUDA driver'") {
  TempDir tmp;
  ScopedEnv cache("MOEQ_CACHE_DIR", tmp.path.c_str());
  const moeq_host_api* host = host::api();
  const char* names[] = {"dot_config.cuh"};
  const char* contents[] = {kDotHeader};
  // A key of this run only: the whole suite in one process (as the sanitizer stage runs it) may
  // already hold this kernel in memory, and the first compile below must reach the disk.
  const std::string tag = "-DMOEQ_TEST_RUN=" + tmp.path.filename().string();
  const char* options[] = {"-DMOEQ_VARIANT=abi", tag.c_str()};
  moeq_jit_compile_args a{};
  a.struct_size = sizeof(a);
  a.name = "fp8_dot";
  a.source = kDotSource;
  a.options = options;
  a.num_options = 2;
  a.header_names = names;
  a.header_contents = contents;
  a.num_headers = 1;
  a.arch = "sm_90a";
  a.plugin_name = "test_plugin";
  a.plugin_version = "0.1.0";
  a.device = {kDLCUDA, 0};
  a.flags = MOEQ_JIT_COMPILE_ONLY;

  moeq_status_code code = MOEQ_STATUS_CODE_OK;
  std::string msg;
  if (!jit::compiler_available()) {
    CHECK(host::take_status(host->jit_compile(&a), code, msg));
    CHECK(code == MOEQ_STATUS_CODE_UNIMPLEMENTED);
    MESSAGE("skipped the rest: this build has no NVRTC");
    return;
  }
  CHECK_FALSE(host::take_status(host->jit_compile(&a), code, msg));
  CHECK(a.cubin != nullptr);
  CHECK(a.cubin_size > 0);
  CHECK(a.module == nullptr);
  CHECK(a.cache_hit == 0);
  const std::vector<uint8_t> cubin(static_cast<const uint8_t*>(a.cubin),
                                   static_cast<const uint8_t*>(a.cubin) + a.cubin_size);
  CHECK(cubin_sm(cubin) == 90);

  CHECK_FALSE(host::take_status(host->jit_compile(&a), code, msg));
  CHECK(a.cache_hit == 1);
  // The process-wide service reads MOEQ_CACHE_DIR once, at its first use: the entry is in
  // tmp only when this test made it (ctest runs each test case in its own process).
  if (jit::JitService::process().config().cache_dir == tmp.path)
    CHECK(check_every_entry_valid(tmp.path) == 1);
  else
    MESSAGE("disk entry not counted: the process JIT service was made earlier, with cache "
            << jit::JitService::process().config().cache_dir);

  // Too small a struct (a caller that does not know the appended fields) is refused.
  moeq_jit_compile_args small = a;
  small.struct_size = MOEQ_STRUCT_SIZE(moeq_jit_compile_args, module);
  CHECK(host::take_status(host->jit_compile(&small), code, msg));
  CHECK(code == MOEQ_STATUS_CODE_INVALID_ARGUMENT);

  // A broken source: the status carries the log.
  moeq_jit_compile_args broken = a;
  broken.source = "extern \"C\" __global__ void k() { nope(); }";
  CHECK(host::take_status(host->jit_compile(&broken), code, msg));
  CHECK(code == MOEQ_STATUS_CODE_INVALID_ARGUMENT);
  CHECK(msg.find("nope") != std::string::npos);

  // Loading needs the driver.
  a.flags = 0;
  if (cuda::available()) {
    a.arch = nullptr;  // the device's own arch
    CHECK_FALSE(host::take_status(host->jit_compile(&a), code, msg));
    CHECK(a.module != nullptr);
  } else {
    CHECK(host::take_status(host->jit_compile(&a), code, msg));
    CHECK(code == MOEQ_STATUS_CODE_UNAVAILABLE);
    CHECK(msg.find("no CUDA driver") != std::string::npos);
    CHECK(a.module == nullptr);
  }
}

// --------------------------------------------------------------------------- driver shim

TEST_CASE("a missing libcuda.so.1 is a clear 'no CUDA driver' reason, not a load failure") {
  const cuda::DriverLoad none = cuda::load_driver("/nonexistent/libcuda.so.1");
  CHECK(none.api == nullptr);
  CHECK(none.error.rfind("no CUDA driver (/nonexistent/libcuda.so.1 not found: ", 0) == 0);

  // The toolkit's link stub exports every symbol but cuInit fails: also a reason.
  const fs::path stub = "/usr/local/cuda/lib64/stubs/libcuda.so";
  if (fs::exists(stub)) {
    const cuda::DriverLoad s = cuda::load_driver(stub.c_str());
    CHECK(s.api == nullptr);
    CHECK(s.error.find("no CUDA driver (cuInit failed") == 0);
  }

  if (cuda::available()) {
    CHECK(cuda::unavailable_reason().empty());
    CHECK_NOTHROW(cuda::require());
  } else {
    CHECK(cuda::unavailable_reason().rfind("no CUDA driver (", 0) == 0);
    try {
      cuda::require();
      FAIL("require() returned without a driver");
    } catch (const Error& e) {
      CHECK(e.code() == MOEQ_STATUS_CODE_UNAVAILABLE);
      CHECK(std::string(e.what()) == cuda::unavailable_reason());
    }
    CHECK_THROWS_AS(cuda::device_count(), Error);
  }
}

namespace {
cuda::CUresult pretend_out_of_memory() { return 2; }
}  // namespace

TEST_CASE("MOEQ_CU_CHECK carries file:line and the failing call") {
  try {
    MOEQ_CU_CHECK(pretend_out_of_memory());
    FAIL("no throw");
  } catch (const Error& e) {
    const std::string m = e.what();
    CAPTURE(m);
    CHECK(e.code() == MOEQ_STATUS_CODE_OUT_OF_MEMORY);
    CHECK(m.find("test_jit.cpp:") != std::string::npos);
    CHECK(m.find("pretend_out_of_memory() failed") != std::string::npos);
  }
}

// --------------------------------------------------------------------------- on a GPU

namespace {

// Runs the loaded fp8_dot kernel (one block of 256) over n fixed fp8 pairs on device 0 (whose
// primary context Module::load made current); `expected` gets the CPU's dot product, `ms` the
// kernel's time. Returns the device's answer.
float run_fp8_dot(cuda::CUfunction fn, int n, double& expected, float* ms = nullptr) {
  const cuda::DriverApi& d = cuda::require();
  std::vector<uint8_t> a(n), b(n);
  expected = 0;
  for (int i = 0; i < n; ++i) {
    a[i] = float_to_fp8_e4m3(0.25f * static_cast<float>((i % 13) - 6));
    b[i] = float_to_fp8_e4m3(i % 2 ? 1.5f : -0.5f);
    expected += double(fp8_e4m3_to_float(a[i])) * fp8_e4m3_to_float(b[i]);
  }
  cuda::CUstream stream = nullptr;
  MOEQ_CU_CHECK(d.cuStreamCreate(&stream, cuda::kStreamNonBlocking));
  cuda::CUdeviceptr da = 0, db = 0, dout = 0;
  MOEQ_CU_CHECK(d.cuMemAlloc_v2(&da, n));
  MOEQ_CU_CHECK(d.cuMemAlloc_v2(&db, n));
  MOEQ_CU_CHECK(d.cuMemAlloc_v2(&dout, sizeof(float)));
  MOEQ_CU_CHECK(d.cuMemcpyHtoDAsync_v2(da, a.data(), n, stream));
  MOEQ_CU_CHECK(d.cuMemcpyHtoDAsync_v2(db, b.data(), n, stream));
  int count = n;
  void* params[] = {&da, &db, &dout, &count};
  cuda::CUevent start = nullptr, stop = nullptr;
  MOEQ_CU_CHECK(d.cuEventCreate(&start, cuda::kEventDefault));
  MOEQ_CU_CHECK(d.cuEventCreate(&stop, cuda::kEventDefault));
  MOEQ_CU_CHECK(d.cuEventRecord(start, stream));
  MOEQ_CU_CHECK(d.cuLaunchKernel(fn, 1, 1, 1, 256, 1, 1, 0, stream, params, nullptr));
  MOEQ_CU_CHECK(d.cuEventRecord(stop, stream));
  float out = 0;
  MOEQ_CU_CHECK(d.cuMemcpyDtoHAsync_v2(&out, dout, sizeof(float), stream));
  MOEQ_CU_CHECK(d.cuStreamSynchronize(stream));
  if (ms != nullptr) MOEQ_CU_CHECK(d.cuEventElapsedTime(ms, start, stop));
  d.cuEventDestroy_v2(start);
  d.cuEventDestroy_v2(stop);
  d.cuMemFree_v2(da);
  d.cuMemFree_v2(db);
  d.cuMemFree_v2(dout);
  d.cuStreamDestroy_v2(stream);
  return out;
}

}  // namespace

TEST_CASE("on a GPU: the fp8 dot kernel, compiled for the device's arch, loads, runs and matches the CPU") {
  if (skip_without_nvrtc() || skip_without_driver()) return;
  REQUIRE(cuda::device_count() > 0);
  const cuda::DeviceProperties props = cuda::device_properties(0);
  const std::string arch = jit::arch_for(props.sm_major, props.sm_minor);
  MESSAGE("device 0: " << props.name << ", " << arch << ", " << props.multiprocessors << " SMs");
  TempDir tmp;
  jit::JitService service(config_in(tmp.path));
  const jit::Kernel k = service.compile(dot_request(arch));
  CHECK(cubin_sm(*k.cubin) == props.sm_major * 10 + props.sm_minor);

  cuda::Module module = cuda::Module::load(0, *k.cubin);
  cuda::CUfunction fn = module.function("fp8_dot");
  CHECK_THROWS_WITH_AS(module.function("no_such_kernel"), doctest::Contains("no_such_kernel"), Error);

  double expected = 0;
  float ms = 0;
  const float out = run_fp8_dot(fn, 1000, expected, &ms);
  CHECK(out == doctest::Approx(expected).epsilon(1e-5));
  MESSAGE("fp8_dot: " << out << " (expected " << expected << "), " << ms * 1000 << " us");
}

// ------------------------------------------------------------------------ PTX as a source kind
namespace {

// `nvcc -ptx -arch=compute_80` (CUDA 13.0) of y[i] = a * x[i]: what a Triton or hand-written
// kernel hands the host as text.
const char* const kScalePtx = R"(//
// Generated by NVIDIA NVVM Compiler
.version 9.0
.target sm_80
.address_size 64

	// .globl	moeq_test_scale

.visible .entry moeq_test_scale(
	.param .u64 moeq_test_scale_param_0,
	.param .u64 moeq_test_scale_param_1,
	.param .f32 moeq_test_scale_param_2,
	.param .u32 moeq_test_scale_param_3
)
{
	.reg .pred 	%p<2>;
	.reg .f32 	%f<4>;
	.reg .b32 	%r<6>;
	.reg .b64 	%rd<8>;

	ld.param.u64 	%rd1, [moeq_test_scale_param_0];
	ld.param.u64 	%rd2, [moeq_test_scale_param_1];
	ld.param.f32 	%f1, [moeq_test_scale_param_2];
	ld.param.u32 	%r2, [moeq_test_scale_param_3];
	mov.u32 	%r3, %ctaid.x;
	mov.u32 	%r4, %ntid.x;
	mov.u32 	%r5, %tid.x;
	mad.lo.s32 	%r1, %r3, %r4, %r5;
	setp.ge.s32 	%p1, %r1, %r2;
	@%p1 bra 	$L__BB0_2;

	cvta.to.global.u64 	%rd3, %rd2;
	mul.wide.s32 	%rd4, %r1, 4;
	add.s64 	%rd5, %rd3, %rd4;
	ld.global.f32 	%f2, [%rd5];
	mul.f32 	%f3, %f2, %f1;
	cvta.to.global.u64 	%rd6, %rd1;
	add.s64 	%rd7, %rd6, %rd4;
	st.global.f32 	[%rd7], %f3;

$L__BB0_2:
	ret;

}
)";

jit::Request ptx_request(const std::string& arch, std::string source = kScalePtx) {
  jit::Request r;
  r.kind = jit::SourceKind::ptx;
  r.name = "scale_ptx";
  r.source = std::move(source);
  r.arch = arch;
  r.plugin_name = "test";
  r.plugin_version = "0.1.0";
  return r;
}

bool skip_without_ptx_compiler() {
  if (jit::ptx_compiler_available()) return false;
  MESSAGE("skipped: no nvJitLink (libnvJitLink.so.13) on this machine");
  return true;
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) s.replace(at, from.size(), to);
  return s;
}

}  // namespace

TEST_CASE("PTX compiles to a CUBIN for every target arch, is cached, and is read back by a new service") {
  if (skip_without_ptx_compiler()) return;
  TempDir dir;
  std::map<std::string, std::string> keys;
  {
    jit::JitService jit(config_in(dir.path));
    for (const char* arch : {"sm_80", "sm_89", "sm_90a"}) {
      CAPTURE(arch);
      const jit::Kernel k = jit.compile(ptx_request(arch));
      CHECK(k.origin == jit::Origin::compiled);
      const std::string a = arch;
      CHECK(cubin_sm(*k.cubin) == std::stoi(a.substr(3, 2)));
      CHECK(contains(*k.cubin, "moeq_test_scale"));
      keys[arch] = k.key;
    }
    CHECK(jit.stats().compiled == 3);
    // The same module as CUDA C++ text would be another entry: the kind is in the key.
    jit::Request as_cuda = ptx_request("sm_80");
    as_cuda.kind = jit::SourceKind::cuda;
    if (jit::compiler_available()) CHECK(jit.key(as_cuda) != keys["sm_80"]);
    CHECK(jit.options(ptx_request("sm_90a")) == std::vector<std::string>{"-arch=sm_90a"});
  }
  CHECK(check_every_entry_valid(dir.path) == 3);
  jit::JitService again(config_in(dir.path));
  for (const char* arch : {"sm_80", "sm_89", "sm_90a"}) {
    CAPTURE(arch);
    const jit::Kernel k = again.compile(ptx_request(arch));
    CHECK(k.origin == jit::Origin::disk_cache);
    CHECK(k.key == keys[arch]);
  }
  CHECK(again.stats().compiled == 0);
  CHECK(again.stats().disk_hits == 3);
}

TEST_CASE("PTX that is malformed, too new, of a target the arch cannot take, or with headers fails with the log") {
  if (skip_without_ptx_compiler()) return;
  jit::JitService jit(jit::Config{});
  auto error = [&](const jit::Request& r) {
    try {
      jit.compile(r);
    } catch (const Error& e) {
      CHECK(e.code() == MOEQ_STATUS_CODE_INVALID_ARGUMENT);
      return std::string(e.what());
    }
    FAIL("compiled");
    return std::string();
  };
  // A syntax error: the compiler's log, with the line, comes back.
  const std::string broken = replace_all(kScalePtx, "mul.f32 \t%f3, %f2, %f1;", "mul.f32 \t%f3, %f2, %bogus;");
  REQUIRE(broken != kScalePtx);
  std::string e = error(ptx_request("sm_80", broken));
  CHECK(e.find("PTX kernel set 'scale_ptx' of plugin test 0.1.0 failed to compile for sm_80") != std::string::npos);
  CHECK(e.find("bogus") != std::string::npos);
  // Not PTX at all.
  e = error(ptx_request("sm_80", "__global__ void k() {}"));
  CHECK(e.find("not a PTX module (expected '.version X.Y' and '.target sm_NN' directives; found no .version, no .target)") !=
        std::string::npos);
  // An ISA newer than the compiler reads.
  e = error(ptx_request("sm_80", replace_all(kScalePtx, ".version 9.0", ".version 99.9")));
  CHECK(e.find("PTX ISA 99.9 is newer than this PTX compiler reads (nvJitLink " + jit::ptx_compiler_version()) !=
        std::string::npos);
  // A module for Hopper cannot become an Ampere CUBIN.
  e = error(ptx_request("sm_80", replace_all(kScalePtx, ".target sm_80", ".target sm_90a")));
  CHECK(e.find("a module for .target sm_90a cannot be compiled for sm_80") != std::string::npos);
  // The host chooses the arch; headers are for CUDA C++ only.
  jit::Request r = ptx_request("sm_80");
  r.options = {"-arch=sm_90"};
  e = error(r);
  CHECK(e.find("the host chooses the target (sm_80); found the option '-arch=sm_90'") != std::string::npos);
  r = ptx_request("sm_80");
  r.headers.push_back({"x.cuh", "int x;"});
  e = error(r);
  CHECK(e.find("PTX takes no headers, found 1") != std::string::npos);
}

TEST_CASE("jit_compile takes PTX through the ABI flag, compile-only without a GPU, and refuses unknown flags") {
  if (skip_without_ptx_compiler()) return;
  moeq_jit_compile_args a{};
  a.struct_size = sizeof a;
  a.name = "abi_ptx";
  a.source = kScalePtx;
  a.arch = "sm_90a";
  a.plugin_name = "test";
  a.plugin_version = "0.1.0";
  a.device = {kDLCPU, 0};
  a.flags = MOEQ_JIT_COMPILE_ONLY | MOEQ_JIT_SOURCE_PTX;
  host::throw_if_error(host::api()->jit_compile(&a), "jit_compile of PTX");
  REQUIRE(a.cubin != nullptr);
  const auto* b = static_cast<const uint8_t*>(a.cubin);
  CHECK(cubin_sm(std::vector<uint8_t>(b, b + a.cubin_size)) == 90);
  CHECK(a.module == nullptr);
  a.flags = MOEQ_JIT_COMPILE_ONLY | MOEQ_JIT_SOURCE_PTX | 64u;
  moeq_status_code code;
  std::string msg;
  REQUIRE(host::take_status(host::api()->jit_compile(&a), code, msg));
  CHECK(msg.find("unknown flags 64") != std::string::npos);
  const char* names[] = {"h.cuh"};
  const char* texts[] = {"int h;"};
  a.flags = MOEQ_JIT_COMPILE_ONLY | MOEQ_JIT_SOURCE_PTX;
  a.header_names = names;
  a.header_contents = texts;
  a.num_headers = 1;
  REQUIRE(host::take_status(host::api()->jit_compile(&a), code, msg));
  CHECK(msg.find("a PTX module takes no headers, found 1") != std::string::npos);
}

// ------------------------------------------------------- forward compatibility: PTX fallback

namespace {

// The newest compute capability this NVRTC emits a CUBIN for, as NVRTC itself lists them.
int newest_nvrtc_arch() {
  const std::vector<int> archs = jit::nvrtc_supported_archs();
  REQUIRE_FALSE(archs.empty());
  CHECK(std::is_sorted(archs.begin(), archs.end()));
  return archs.back();
}

std::string text_of(const std::vector<uint8_t>& image) {
  REQUIRE_FALSE(image.empty());
  CHECK(image.back() == 0);  // NUL-terminated, as cuModuleLoadData reads PTX
  return std::string(image.begin(), image.end() - 1);
}

// Log lines of the scope, restoring the previous sink at its end.
struct CapturedLog {
  std::vector<std::string> warnings;
  std::mutex mutex;
  host::LogSink previous;
  CapturedLog() {
    previous = host::set_log_sink([this](moeq_log_level level, const std::string& source, const std::string& m) {
      std::lock_guard<std::mutex> lock(mutex);
      if (level == MOEQ_LOG_LEVEL_WARNING) warnings.push_back(source + ": " + m);
    });
  }
  ~CapturedLog() { host::set_log_sink(previous); }
};

}  // namespace

TEST_CASE("an arch newer than NVRTC knows gets PTX for NVRTC's newest virtual arch, the driver compiles it at load") {
  if (skip_without_nvrtc()) return;
  const int newest = newest_nvrtc_arch();
  const std::string future = "sm_" + std::to_string(newest + 10);  // "sm_131" with NVRTC 13.0
  const std::string compute = "compute_" + std::to_string(newest);
  MESSAGE("NVRTC " << jit::compiler_version() << ": newest sm_" << newest << ", asking for " << future);

  // The target: PTX for the plain compute_<newest> (no 'a'/'f', whatever the request says);
  // a known arch stays itself, and so does one older than NVRTC's oldest (NVRTC says no).
  CHECK(jit::nvrtc_target(future).name == compute);
  CHECK(jit::nvrtc_target(future).image == jit::Image::ptx);
  CHECK(jit::nvrtc_target(future + "a").name == compute);
  CHECK(jit::nvrtc_target("sm_" + std::to_string(newest * 10) + "f").image == jit::Image::ptx);
  CHECK(jit::nvrtc_target("sm_90a").name == "sm_90a");
  CHECK(jit::nvrtc_target("sm_90a").image == jit::Image::cubin);
  CHECK(jit::nvrtc_target("sm_" + std::to_string(newest)).image == jit::Image::cubin);
  CHECK(jit::nvrtc_target("sm_35").image == jit::Image::cubin);

  TempDir tmp;
  std::vector<uint8_t> first;
  std::string key;
  {
    CapturedLog log;
    jit::JitService service(config_in(tmp.path));
    const jit::Request r = dot_request(future);
    const std::vector<std::string> opts = service.options(r);
    CHECK(opts.front() == "--gpu-architecture=" + compute);
    const jit::Kernel k = service.compile(r);
    CHECK(k.origin == jit::Origin::compiled);
    CHECK(k.image == jit::Image::ptx);
    CHECK(std::string(jit::image_name(k.image)) == "ptx");
    CHECK(k.arch == future);
    CHECK(k.target == compute);
    const std::string ptx = text_of(*k.cubin);
    CHECK(std::memcmp(k.cubin->data(), "\x7f" "ELF", 4) != 0);
    CHECK(ptx.find("\n.version ") != std::string::npos);
    CHECK(ptx.find("\n.target sm_" + std::to_string(newest) + "\n") != std::string::npos);
    CHECK(ptx.find(".entry fp8_dot(") != std::string::npos);
    // One warning, naming the kernel set, the requested arch, the PTX target and the driver.
    REQUIRE(log.warnings.size() == 1);
    const std::string& w = log.warnings[0];
    CAPTURE(w);
    CHECK(w.find("'fp8_dot'") != std::string::npos);
    CHECK(w.find(future + " is newer than this NVRTC") != std::string::npos);
    CHECK(w.find("PTX for " + compute) != std::string::npos);
    CHECK(w.find("the CUDA driver compiles") != std::string::npos);
    // The same request again in this process: memory, no second warning.
    const jit::Kernel again = service.compile(r);
    CHECK(again.origin == jit::Origin::memory);
    CHECK(again.image == jit::Image::ptx);
    CHECK(log.warnings.size() == 1);
    first = *k.cubin;
    key = k.key;
  }
  // On disk as a .ptx entry under the request's arch and key, never as a .cubin.
  const jit::JitCache cache(tmp.path);
  const fs::path entry = cache.entry_path(future, digest_of_hex(key), jit::Image::ptx);
  CHECK(entry.extension() == ".ptx");
  CHECK(fs::exists(entry));
  CHECK_FALSE(fs::exists(cache.entry_path(future, digest_of_hex(key))));
  CHECK(jit::decode_entry(digest_of_hex(key), read_bytes(entry)).payload == first);

  // A new service reads it back as PTX (and warns again: a new process would).
  CapturedLog log;
  jit::JitService fresh(config_in(tmp.path));
  const jit::Kernel c = fresh.compile(dot_request(future));
  CHECK(c.origin == jit::Origin::disk_cache);
  CHECK(c.image == jit::Image::ptx);
  CHECK(c.target == compute);
  CHECK(*c.cubin == first);
  CHECK(fresh.stats().compiled == 0);
  CHECK(log.warnings.size() == 1);

  // An ordinary arch beside it is still a CUBIN of its own arch, under another key.
  const jit::Kernel normal = fresh.compile(dot_request("sm_89"));
  CHECK(normal.image == jit::Image::cubin);
  CHECK(normal.target == "sm_89");
  CHECK(cubin_sm(*normal.cubin) == 89);
  CHECK(normal.key != c.key);
  CHECK(log.warnings.size() == 1);
}

TEST_CASE("a PTX fallback entry and a CUBIN entry are never taken for each other") {
  if (skip_without_nvrtc()) return;
  const std::string future = "sm_" + std::to_string(newest_nvrtc_arch() + 10);
  TempDir tmp;
  std::string key;
  {
    CapturedLog quiet;
    jit::JitService service(config_in(tmp.path));
    key = service.compile(dot_request(future)).key;
  }
  // A CUBIN planted in the PTX entry (a valid entry of the right key) is rebuilt, not served.
  jit::JitService cubins(config_in(tmp.path / "other"));
  const jit::Kernel elf = cubins.compile(dot_request("sm_80"));
  const jit::JitCache cache(tmp.path);
  REQUIRE(cache.store(future, digest_of_hex(key), *elf.cubin, jit::Image::ptx) == "");
  CapturedLog log;
  jit::JitService fresh(config_in(tmp.path));
  const jit::Kernel k = fresh.compile(dot_request(future));
  CHECK(k.origin == jit::Origin::compiled);
  CHECK(k.image == jit::Image::ptx);
  CHECK(text_of(*k.cubin).find(".target sm_") != std::string::npos);
  CHECK(fresh.stats().corrupt_entries == 1);
  bool said = false;
  for (const auto& w : log.warnings) said = said || w.find("holds an ELF image, expected PTX") != std::string::npos;
  CHECK(said);
}

TEST_CASE("jit_compile says image_kind 1 for the PTX fallback, 0 for a CUBIN, and leaves an older struct alone") {
  if (skip_without_nvrtc()) return;
  const std::string future = "sm_" + std::to_string(newest_nvrtc_arch() + 10);
  CapturedLog quiet;
  moeq_jit_compile_args a{};
  a.struct_size = sizeof a;
  a.name = "abi_future";
  a.source = "extern \"C\" __global__ void twice(float* x) { x[threadIdx.x] *= 2.0f; }";
  a.arch = future.c_str();
  a.plugin_name = "test";
  a.plugin_version = "0.1.0";
  a.device = {kDLCPU, 0};
  a.flags = MOEQ_JIT_COMPILE_ONLY;
  a.image_kind = 7;
  host::throw_if_error(host::api()->jit_compile(&a), "jit_compile for a future arch");
  CHECK(a.image_kind == MOEQ_JIT_IMAGE_PTX);
  REQUIRE(a.cubin != nullptr);
  const auto* b = static_cast<const uint8_t*>(a.cubin);
  const std::string ptx = text_of(std::vector<uint8_t>(b, b + a.cubin_size));
  CHECK(std::memcmp(b, "\x7f" "ELF", 4) != 0);
  CHECK(ptx.find(".version ") != std::string::npos);
  CHECK(ptx.find(".target sm_" + std::to_string(newest_nvrtc_arch())) != std::string::npos);
  CHECK(ptx.find(".entry twice(") != std::string::npos);
  CHECK(a.module == nullptr);

  a.arch = "sm_80";
  a.image_kind = 7;
  host::throw_if_error(host::api()->jit_compile(&a), "jit_compile for sm_80");
  CHECK(a.image_kind == MOEQ_JIT_IMAGE_CUBIN);
  CHECK(cubin_sm(std::vector<uint8_t>(static_cast<const uint8_t*>(a.cubin),
                                      static_cast<const uint8_t*>(a.cubin) + a.cubin_size)) == 80);

  // A caller built before image_kind (struct_size up to cubin_size) gets the PTX, and the bytes
  // past its struct are not written.
  a.struct_size = MOEQ_STRUCT_SIZE(moeq_jit_compile_args, cubin_size);
  a.arch = future.c_str();
  a.image_kind = 7;
  host::throw_if_error(host::api()->jit_compile(&a), "jit_compile with a 1.0 struct_size");
  CHECK(a.image_kind == 7);
  CHECK(std::memcmp(a.cubin, "\x7f" "ELF", 4) != 0);
}

TEST_CASE("on a GPU: the PTX fallback image, NUL-terminated as cached, loads through the driver's JIT and runs") {
  if (skip_without_nvrtc() || skip_without_driver()) return;
  REQUIRE(cuda::device_count() > 0);
  const cuda::DeviceProperties props = cuda::device_properties(0);
  const int sm = props.sm_major * 10 + props.sm_minor;
  if (sm < 89) {
    MESSAGE("skipped: the fp8 dot kernel needs sm_89 or newer, device 0 is sm_" << sm);
    return;
  }
  const int newest = newest_nvrtc_arch();
  TempDir tmp;
  CapturedLog quiet;
  jit::JitService service(config_in(tmp.path));
  const jit::Kernel k = service.compile(dot_request("sm_" + std::to_string(newest + 10)));
  REQUIRE(k.image == jit::Image::ptx);
  // No device here is newer than this NVRTC, so the PTX's .target (NVRTC's newest) is retargeted
  // to the device: what is tested is that the image as the JIT hands it out (text with its NUL)
  // is one cuModuleLoadData compiles and loads.
  std::string ptx = text_of(*k.cubin);
  const std::string from = "\n.target sm_" + std::to_string(newest) + "\n";
  const size_t at = ptx.find(from);
  REQUIRE(at != std::string::npos);
  ptx.replace(at, from.size(), "\n.target sm_" + std::to_string(sm) + "\n");
  std::vector<uint8_t> image(ptx.begin(), ptx.end());
  image.push_back(0);
  cuda::Module module = cuda::Module::load(0, image);
  cuda::CUfunction fn = module.function("fp8_dot");
  double expected = 0;
  const float out = run_fp8_dot(fn, 512, expected);
  CHECK(out == doctest::Approx(expected).epsilon(1e-5));
  MESSAGE("fp8_dot from PTX (" << k.target << " retargeted to sm_" << sm << "): " << out << ", expected " << expected);
}
