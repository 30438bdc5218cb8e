// Registry: refusals with reasons, probe-based selection, search path. Runs against the
// synthetic C plugins in tests/plugins (built into MOEQ_TEST_BAD_PLUGIN_DIR/<case>/) and a
// small fake host table defined here.
#include <moeq/error.hpp>
#include <moeq/registry.hpp>

#include <doctest/doctest.h>

#include <dlfcn.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using moeq::Error;
using moeq::ProbeQuery;
using moeq::Registry;

namespace {

// ----------------------------------------------------------------------- fake host ---
// NOTE: the status type stays opaque here (no `struct moeq_status` definition): the real
// host in moeq_core owns that name, and two definitions in one binary would break the ODR.
struct FakeStatus {
  moeq_status_code code;
  std::string message;
};

std::atomic<int> g_live_statuses{0};
std::vector<std::string> g_log;  // "source: message"

moeq_status* fake_status_create(moeq_status_code code, const char* message) {
  ++g_live_statuses;
  return reinterpret_cast<moeq_status*>(new FakeStatus{code, message ? message : ""});
}
moeq_status_code fake_status_code(const moeq_status* s) {
  return reinterpret_cast<const FakeStatus*>(s)->code;
}
const char* fake_status_message(const moeq_status* s) {
  return reinterpret_cast<const FakeStatus*>(s)->message.c_str();
}
void fake_status_destroy(moeq_status* s) {
  if (s == nullptr) return;
  --g_live_statuses;
  delete reinterpret_cast<FakeStatus*>(s);
}
void fake_log(moeq_log_level, const char* source, const char* message) {
  g_log.push_back(std::string(source) + ": " + message);
}
moeq_status* unimplemented() {
  return fake_status_create(MOEQ_STATUS_CODE_UNIMPLEMENTED, "the fake test host does not do this");
}
moeq_status* fake_device_info(moeq_device_info_args*) { return unimplemented(); }
moeq_status* fake_param_create(moeq_param_create_args*) { return unimplemented(); }
moeq_status* fake_copy_to_param(moeq_copy_to_param_args*) { return unimplemented(); }
moeq_status* fake_param_fill(moeq_param_fill_args*) { return unimplemented(); }
moeq_status* fake_jit_compile(moeq_jit_compile_args*) { return unimplemented(); }
moeq_status* fake_method_create(moeq_host_method_create_args*) { return unimplemented(); }

const moeq_host_api kFakeHost = {
    MOEQ_STRUCT_SIZE(moeq_host_api, method_create),
    MOEQ_ABI_MAJOR,
    MOEQ_ABI_MINOR,
    fake_status_create,
    fake_status_code,
    fake_status_message,
    fake_status_destroy,
    fake_log,
    fake_device_info,
    fake_param_create,
    fake_copy_to_param,
    fake_param_fill,
    fake_jit_compile,
    fake_method_create,
};

// ------------------------------------------------------------------------- helpers ---
const fs::path kCases = MOEQ_TEST_BAD_PLUGIN_DIR;

fs::path plugin_file(const char* case_dir, const char* name) {
  return kCases / case_dir / (std::string(name) + ".so");
}

ProbeQuery layer0() {
  ProbeQuery q;
  q.quant_config_json = R"({"quant_method": "fp8"})";
  q.quant_config_source = "config.json";
  q.layer_name = "model.layers.0.mlp.experts";
  q.weight_dtype = "F8_E4M3";
  return q;
}

std::string last_refusal(const Registry& r) {
  REQUIRE_FALSE(r.refusals().empty());
  return r.refusals().back().reason;
}

Error select_error(const Registry& r, const ProbeQuery& q, std::string_view pin = {}) {
  try {
    r.select(q, pin);
  } catch (const Error& e) {
    return e;
  }
  FAIL("select() returned instead of throwing moeq::Error");
  return Error(MOEQ_STATUS_CODE_OK, "");
}

bool is_loaded_in_process(const fs::path& file) {
  void* h = dlopen(file.c_str(), RTLD_NOW | RTLD_NOLOAD);
  if (h == nullptr) return false;
  dlclose(h);  // drops only the reference RTLD_NOLOAD just took
  return true;
}

std::vector<std::string> plugin_names(const Registry& r) {
  std::vector<std::string> names;
  for (const auto& p : r.plugins()) names.push_back(p->name);
  return names;
}

// Sets an environment variable for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (old_) {
      setenv(name_, old_->c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// A private directory under the temp dir, removed at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "moeq_registry_test_XXXXXX").string();
    REQUIRE(mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    fs::permissions(path_, fs::perms::owner_all, ec);
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

}  // namespace

// ------------------------------------------------------------------------ refusals ---

TEST_CASE("a valid plugin loads with its name, version and effective minor") {
  Registry r(&kFakeHost);
  const moeq::LoadedPlugin* p = r.load_file(plugin_file("good_a", "good_a"));
  REQUIRE(p != nullptr);
  CHECK(p->name == "good_a");
  CHECK(p->version == "0.0.1");
  CHECK(p->effective_minor == MOEQ_ABI_MINOR);
  CHECK((p->shutdown() != nullptr));
  CHECK((p->describe() != nullptr));
  CHECK(r.refusals().empty());
  CHECK(r.find("good_a") == p);
  CHECK(r.find("nope") == nullptr);
}

TEST_CASE("a plugin of another ABI major is refused naming both majors") {
  Registry r(&kFakeHost);
  const fs::path file = plugin_file("wrong_major", "wrong_major");
  CHECK(r.load_file(file) == nullptr);
  CHECK(r.plugins().empty());
  REQUIRE(r.refusals().size() == 1);
  CHECK(r.refusals()[0].file == file);
  CHECK(r.refusals()[0].reason == "ABI major 2, this host speaks 1");
}

TEST_CASE("a NULL required slot is refused naming the slot") {
  Registry r(&kFakeHost);
  CHECK(r.load_file(plugin_file("missing_slot", "missing_slot")) == nullptr);
  CHECK(last_refusal(r) == "required slot 'probe' is NULL");
}

TEST_CASE("a plugin that needs a newer host minor is refused with both versions") {
  Registry r(&kFakeHost);
  CHECK(r.load_file(plugin_file("too_new_minor", "too_new_minor")) == nullptr);
  CHECK(last_refusal(r) == "needs host ABI minor >= 99, this host is 1." + std::to_string(MOEQ_ABI_MINOR));
}

TEST_CASE("a file without the entry symbol is refused before any of its code runs") {
  Registry r(&kFakeHost);
  const fs::path file = plugin_file("no_entry", "no_entry");
  CHECK(r.load_file(file) == nullptr);
  CHECK(last_refusal(r) == "does not export moeq_plugin_get_descriptor");
  CHECK_FALSE(is_loaded_in_process(file));
  CHECK(std::getenv("MOEQ_TEST_NO_ENTRY_WAS_LOADED") == nullptr);  // its constructor never ran
}

TEST_CASE("a .so that is not ELF is refused as not a shared object") {
  Registry r(&kFakeHost);
  CHECK(r.load_file(kCases / "not_elf" / "not_elf.so") == nullptr);
  CHECK(last_refusal(r).rfind("not a shared object: ", 0) == 0);
}

TEST_CASE("a missing file is refused, not thrown") {
  Registry r(&kFakeHost);
  CHECK(r.load_file(kCases / "good_a" / "no_such_plugin.so") == nullptr);
  CHECK(last_refusal(r) == "no such file");
}

TEST_CASE("a plugin name outside [a-z0-9_]+ is refused") {
  Registry r(&kFakeHost);
  CHECK(r.load_file(plugin_file("bad_name", "bad_name")) == nullptr);
  CHECK(last_refusal(r) == "plugin name 'Bad-Name' is not [a-z0-9_]+");
}

TEST_CASE("descriptor and api larger than the host knows are accepted and used at the host's minor") {
  Registry r(&kFakeHost);
  const moeq::LoadedPlugin* p = r.load_file(plugin_file("bigger_struct", "bigger_struct"));
  REQUIRE_MESSAGE(p != nullptr, (r.refusals().empty() ? "" : r.refusals().back().reason));
  CHECK(p->descriptor->struct_size > sizeof(moeq_plugin_descriptor));
  CHECK(p->api->struct_size > MOEQ_STRUCT_SIZE(moeq_plugin_api, describe));
  CHECK(p->descriptor->abi_minor == MOEQ_ABI_MINOR + 3);
  CHECK(p->effective_minor == MOEQ_ABI_MINOR);
  CHECK(p->version == "1.3.0");
  REQUIRE((p->describe() != nullptr));
  char json[64] = {};
  moeq_describe_args args{MOEQ_STRUCT_SIZE(moeq_describe_args, json_capacity), nullptr, json, sizeof json};
  CHECK(p->describe()(&args) == nullptr);
  CHECK(std::string(json) == R"({"test":true})");
  CHECK((p->shutdown() != nullptr));
}

TEST_CASE("optional slots are reachable only when the table's struct_size covers them") {
  moeq_plugin_api api{};
  api.shutdown = [] {};
  api.describe = [](moeq_describe_args*) -> moeq_status* { return nullptr; };
  moeq::LoadedPlugin p;
  p.api = &api;
  api.struct_size = MOEQ_STRUCT_SIZE(moeq_plugin_api, shutdown);
  CHECK((p.shutdown() != nullptr));
  CHECK((p.describe() == nullptr));
  api.struct_size = MOEQ_STRUCT_SIZE(moeq_plugin_api, describe);
  CHECK((p.describe() != nullptr));
  api.describe = nullptr;
  CHECK((p.describe() == nullptr));
}

TEST_CASE("an initialize failure is refused with the plugin's own message and the status freed") {
  const int live_before = g_live_statuses.load();
  Registry r(&kFakeHost);
  CHECK(r.load_file(plugin_file("init_fails", "init_fails")) == nullptr);
  CHECK(r.plugins().empty());
  CHECK(last_refusal(r) == "initialize failed: init_fails: no device here");
  CHECK(g_live_statuses.load() == live_before);
}

TEST_CASE("a second plugin with an already-loaded name is refused naming both files") {
  Registry r(&kFakeHost);
  const fs::path first = plugin_file("good_a", "good_a");
  const fs::path second = plugin_file("duplicate", "good_a_copy");
  REQUIRE(r.load_file(first) != nullptr);
  CHECK(r.load_file(second) == nullptr);
  CHECK(r.plugins().size() == 1);
  const std::string reason = last_refusal(r);
  CHECK(reason.find("'good_a'") != std::string::npos);
  CHECK(reason.find(first.string()) != std::string::npos);
  CHECK(reason.find(second.string()) != std::string::npos);
  CHECK(r.refusals().back().file == second);
}

TEST_CASE("a missing directory is a refusal entry, not an exception") {
  Registry r(&kFakeHost);
  const fs::path dir = kCases / "does_not_exist";
  CHECK_NOTHROW(r.load_directory(dir));
  CHECK(r.plugins().empty());
  REQUIRE(r.refusals().size() == 1);
  CHECK(r.refusals()[0].file == dir);
  CHECK(r.refusals()[0].reason == "no such directory");
}

TEST_CASE("load_directory loads only *.so files, in name order") {
  Registry r(&kFakeHost);
  r.load_directory(kCases / "tie");  // also holds README.txt
  CHECK(plugin_names(r) == std::vector<std::string>{"tie_a", "tie_b"});
  CHECK(r.refusals().empty());
}

TEST_CASE("a directory or plugin file writable by other users is refused") {
  TempDir tmp;
  const fs::path copy = tmp.path() / "good_a_copy.so";
  fs::copy_file(plugin_file("good_a", "good_a"), copy);
  SUBCASE("directory") {
    fs::permissions(tmp.path(), fs::perms::all);
    Registry r(&kFakeHost);
    r.load_directory(tmp.path());
    CHECK(r.plugins().empty());
    CHECK(last_refusal(r).find("writable by other users") != std::string::npos);
    CHECK(r.load_file(copy) == nullptr);
    CHECK(last_refusal(r).find("writable by other users") != std::string::npos);
  }
  SUBCASE("file") {
    fs::permissions(tmp.path(), fs::perms::owner_all);
    fs::permissions(copy, fs::perms::others_write, fs::perm_options::add);
    Registry r(&kFakeHost);
    CHECK(r.load_file(copy) == nullptr);
    CHECK(last_refusal(r).find("writable by other users") != std::string::npos);
    CHECK_FALSE(is_loaded_in_process(copy));
  }
}

TEST_CASE("every refusal is logged through the host with its reason") {
  g_log.clear();
  Registry r(&kFakeHost);
  r.load_file(plugin_file("wrong_major", "wrong_major"));
  const bool logged = std::any_of(g_log.begin(), g_log.end(), [](const std::string& line) {
    return line.find("ABI major 2, this host speaks 1") != std::string::npos;
  });
  CHECK(logged);
}

// ---------------------------------------------------------------------- lifecycle ---

TEST_CASE("the registry calls each plugin's shutdown once and never unloads the code") {
  auto shutdowns = [] { return std::count(g_log.begin(), g_log.end(), std::string("good_a: shutdown")); };
  const fs::path file = plugin_file("good_a", "good_a");
  const auto before = shutdowns();
  {
    Registry r(&kFakeHost);
    REQUIRE(r.load_file(file) != nullptr);
    r.load_file(plugin_file("declines", "declines"));  // shutdown NULL: skipped
    CHECK(shutdowns() == before);
  }
  CHECK(shutdowns() == before + 1);
  CHECK(is_loaded_in_process(file));
}

TEST_CASE("missing dependencies are listed by name") {
  SUBCASE("one of two present") {
    Registry r(&kFakeHost);
    r.load_file(plugin_file("good_a", "good_a"));
    r.load_file(plugin_file("needs_dep", "needs_dep"));
    CHECK(r.missing_dependencies() ==
          std::vector<std::string>{"needs_dep needs plugin absent_dep, which is not loaded"});
  }
  SUBCASE("none present") {
    Registry r(&kFakeHost);
    r.load_file(plugin_file("needs_dep", "needs_dep"));
    CHECK(r.missing_dependencies() ==
          std::vector<std::string>{"needs_dep needs plugin good_a, which is not loaded",
                                   "needs_dep needs plugin absent_dep, which is not loaded"});
  }
}

// ----------------------------------------------------------------------- selection ---

TEST_CASE("the highest score wins and every plugin's answer is kept in load order") {
  Registry r(&kFakeHost);
  r.load_file(plugin_file("bigger_struct", "bigger_struct"));  // 3
  r.load_file(plugin_file("good_a", "good_a"));                // 5
  r.load_file(plugin_file("declines", "declines"));            // 0
  const moeq::Selection s = r.select(layer0());
  REQUIRE(s.chosen != nullptr);
  CHECK(s.chosen->name == "good_a");
  CHECK(s.why == "highest score 5");
  REQUIRE(s.probes.size() == 3);
  CHECK(s.probes[0].plugin->name == "bigger_struct");
  CHECK(s.probes[0].score == 3);
  CHECK(s.probes[1].score == 5);
  CHECK(s.probes[1].reason == "test a");
  CHECK(s.probes[2].score == 0);
  CHECK(s.probes[2].reason == "only takes fp4");
}

TEST_CASE("two plugins with the same top score is an error naming both") {
  Registry r(&kFakeHost);
  r.load_directory(kCases / "tie");
  r.load_file(plugin_file("good_a", "good_a"));  // 5: below the tie, not named
  const Error e = select_error(r, layer0());
  CHECK(std::string(e.what()) ==
        "plugins tie_a and tie_b both claim layer model.layers.0.mlp.experts with score 7; pin one");
}

TEST_CASE("a pin breaks a tie") {
  Registry r(&kFakeHost);
  r.load_directory(kCases / "tie");
  const moeq::Selection s = r.select(layer0(), "tie_b");
  REQUIRE(s.chosen != nullptr);
  CHECK(s.chosen->name == "tie_b");
  CHECK(s.why == "pinned by the user");
  CHECK(s.probes.size() == 2);
}

TEST_CASE("pinning a plugin that is not loaded names the ones that are") {
  Registry r(&kFakeHost);
  r.load_directory(kCases / "tie");
  const Error e = select_error(r, layer0(), "nope");
  CHECK(e.code() == MOEQ_STATUS_CODE_NOT_FOUND);
  CHECK(std::string(e.what()) == "pinned plugin nope is not loaded (loaded: tie_a, tie_b)");
}

TEST_CASE("pinning a plugin that declines gives its reason") {
  Registry r(&kFakeHost);
  r.load_file(plugin_file("good_a", "good_a"));
  r.load_file(plugin_file("declines", "declines"));
  const Error e = select_error(r, layer0(), "declines");
  CHECK(std::string(e.what()) == "pinned plugin declines declines: only takes fp4");
}

TEST_CASE("declines always carry a reason, when nobody takes the layer the error lists them all") {
  const int live_before = g_live_statuses.load();
  Registry r(&kFakeHost);
  r.load_file(plugin_file("declines", "declines"));
  r.load_file(plugin_file("silent_decline", "silent_decline"));
  r.load_file(plugin_file("probe_fails", "probe_fails"));
  REQUIRE(r.plugins().size() == 3);

  const std::vector<moeq::ProbeResult> probes = r.probe_all(layer0());
  REQUIRE(probes.size() == 3);
  CHECK(probes[0].score == 0);
  CHECK(probes[0].reason == "only takes fp4");
  CHECK(probes[1].score == 0);
  CHECK(probes[1].reason == "declined without a reason");
  CHECK(probes[2].score == 0);
  CHECK(probes[2].reason == "probe_fails: cannot parse the quant config");

  const Error e = select_error(r, layer0());
  CHECK(std::string(e.what()) ==
        "no plugin takes layer model.layers.0.mlp.experts: declines: only takes fp4; "
        "silent_decline: declined without a reason; "
        "probe_fails: probe_fails: cannot parse the quant config");
  CHECK(g_live_statuses.load() == live_before);  // probe statuses were destroyed
}

TEST_CASE("select with no plugin loaded says so") {
  Registry r(&kFakeHost);
  const Error e = select_error(r, layer0());
  CHECK(std::string(e.what()) == "no plugin takes layer model.layers.0.mlp.experts: no plugin is loaded");
  const Error pinned = select_error(r, layer0(), "good_a");
  CHECK(std::string(pinned.what()) == "pinned plugin good_a is not loaded (loaded: none)");
}

// --------------------------------------------------------------------- search path ---

TEST_CASE("search_path: plugin_dir, then MOEQ_PLUGIN_PATH in order, then <exe>/../plugins and <exe>/../lib/moeq/plugins, no repeats") {
  const fs::path tie = kCases / "tie";
  const fs::path declines = kCases / "declines";
  const fs::path good = kCases / "good_a";
  const fs::path exe = fs::read_symlink("/proc/self/exe");
  const fs::path build_default = fs::weakly_canonical(exe.parent_path() / ".." / "plugins");
  const fs::path install_default = fs::weakly_canonical(exe.parent_path() / ".." / "lib" / "moeq" / "plugins");

  SUBCASE("with all three") {
    ScopedEnv env("MOEQ_PLUGIN_PATH", tie.string() + ":" + declines.string() + "::" + tie.string() +
                                          "/:" + good.string());
    const std::vector<fs::path> path = Registry::search_path(good);
    CHECK(path == std::vector<fs::path>{fs::weakly_canonical(good), fs::weakly_canonical(tie),
                                        fs::weakly_canonical(declines), build_default, install_default});
  }
  SUBCASE("without a plugin_dir or MOEQ_PLUGIN_PATH only the defaults are left") {
    ScopedEnv env("MOEQ_PLUGIN_PATH", "");
    CHECK(Registry::search_path(std::nullopt) == std::vector<fs::path>{build_default, install_default});
  }
  SUBCASE("a directory from MOEQ_PLUGIN_PATH can be loaded") {
    ScopedEnv env("MOEQ_PLUGIN_PATH", tie.string());
    Registry r(&kFakeHost);
    for (const fs::path& dir : Registry::search_path(std::nullopt)) {
      if (dir == fs::weakly_canonical(tie)) r.load_directory(dir);
    }
    CHECK(plugin_names(r) == std::vector<std::string>{"tie_a", "tie_b"});
  }
}
