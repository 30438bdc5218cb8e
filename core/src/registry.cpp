// Plugin registry: discovery, checks before and after loading, probe-based selection.
#include <moeq/registry.hpp>

#include <moeq/host.hpp>

#include <moeq/error.hpp>
#include <moeq/file_trust.hpp>

#include <dlfcn.h>
#include <unistd.h>

#include <boost/dll/library_info.hpp>
#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/dll/shared_library.hpp>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <system_error>
#include <type_traits>
#include <utility>

namespace fs = std::filesystem;

namespace moeq {
namespace {

// Sizes of the v1.0 structs: anything smaller is refused, anything larger is accepted.
constexpr size_t kDescriptorV1Size = MOEQ_STRUCT_SIZE(moeq_plugin_descriptor, api);
constexpr size_t kApiV1Size = MOEQ_STRUCT_SIZE(moeq_plugin_api, describe);
constexpr size_t kProbeReasonCapacity = 512;
constexpr const char* kLogSource = "moeq";

using EntryFn = std::remove_pointer_t<moeq_plugin_get_descriptor_fn>;

// NOTE: plugins are never unloaded (docs/DESIGN.md §4): a plugin's code may still be referenced by
// methods, statuses or threads after the registry that loaded it is gone, and unloading is
// where Boost.DLL's documented misuses all live. Every library is parked here for the life of
// the process; the list is reachable from a static pointer and never destroyed, so no
// dlclose runs at exit either, and leak checkers see it as reachable.
void keep_forever(const std::shared_ptr<boost::dll::shared_library>& library) {
  static auto* mutex = new std::mutex;
  static auto* kept = new std::vector<std::shared_ptr<boost::dll::shared_library>>;
  std::lock_guard lock(*mutex);
  kept->push_back(library);
}

bool valid_plugin_name(const char* name) {
  if (name == nullptr || *name == '\0') return false;
  for (const char* c = name; *c != '\0'; ++c) {
    const bool ok = (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_';
    if (!ok) return false;
  }
  return true;
}

// Empty when the file starts with the ELF magic, else why not.
std::string elf_magic_problem(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return "cannot open the file for reading";
  std::array<char, 4> magic{};
  in.read(magic.data(), magic.size());
  if (in.gcount() != static_cast<std::streamsize>(magic.size())) return "file too short for an ELF header";
  if (std::memcmp(magic.data(), "\x7f" "ELF", 4) != 0) return "no ELF header";
  return {};
}

// Which required slot is NULL, or nullptr when all are present.
const char* missing_required_slot(const moeq_plugin_api& api) {
  if (api.initialize == nullptr) return "initialize";
  if (api.probe == nullptr) return "probe";
  if (api.method_create == nullptr) return "method_create";
  if (api.method_destroy == nullptr) return "method_destroy";
  if (api.create_weights == nullptr) return "create_weights";
  if (api.weight_loader == nullptr) return "weight_loader";
  if (api.process_after_loading == nullptr) return "process_after_loading";
  if (api.apply == nullptr) return "apply";
  return nullptr;
}

// Checks everything the host can check on a descriptor without calling into the plugin.
// Empty when acceptable, else the one-line refusal.
std::string check_descriptor(const moeq_plugin_descriptor* d) {
  if (d == nullptr) return MOEQ_PLUGIN_ENTRY_SYMBOL " returned NULL";
  // struct_size, abi_major and abi_minor sit at the same place in every major, so the major
  // is checked first: a plugin of another major gets the useful message, not a size one.
  if (d->abi_major != MOEQ_ABI_MAJOR) {
    return "ABI major " + std::to_string(d->abi_major) + ", this host speaks " +
           std::to_string(MOEQ_ABI_MAJOR);
  }
  if (d->struct_size < kDescriptorV1Size) {
    return "descriptor struct_size " + std::to_string(d->struct_size) +
           " is smaller than the ABI 1.0 size " + std::to_string(kDescriptorV1Size);
  }
  if (d->min_host_minor > MOEQ_ABI_MINOR) {
    return "needs host ABI minor >= " + std::to_string(d->min_host_minor) + ", this host is " +
           std::to_string(MOEQ_ABI_MAJOR) + "." + std::to_string(MOEQ_ABI_MINOR);
  }
  if (d->name == nullptr || *d->name == '\0') return "plugin name is empty";
  if (!valid_plugin_name(d->name)) {
    return "plugin name '" + std::string(d->name) + "' is not [a-z0-9_]+";
  }
  const std::string name = d->name;
  if (d->version == nullptr || *d->version == '\0') return "plugin " + name + " has an empty version";
  if (d->num_schemes > 0) {
    if (d->schemes == nullptr) return "plugin " + name + " has num_schemes > 0 but schemes is NULL";
    for (size_t i = 0; i < d->num_schemes; ++i) {
      if (d->schemes[i] == nullptr) return "plugin " + name + " has a NULL scheme name";
    }
  }
  if (d->num_requires_plugins > 0) {
    if (d->requires_plugins == nullptr) {
      return "plugin " + name + " has num_requires_plugins > 0 but requires_plugins is NULL";
    }
    for (size_t i = 0; i < d->num_requires_plugins; ++i) {
      if (d->requires_plugins[i] == nullptr) return "plugin " + name + " requires a NULL plugin name";
    }
  }
  if (d->api == nullptr) return "plugin " + name + " has no function table (api is NULL)";
  if (d->api->struct_size < kApiV1Size) {
    return "api struct_size " + std::to_string(d->api->struct_size) +
           " is smaller than the ABI 1.0 size " + std::to_string(kApiV1Size);
  }
  if (const char* slot = missing_required_slot(*d->api)) {
    return std::string("required slot '") + slot + "' is NULL";
  }
  return {};
}

std::string join(const std::vector<std::string>& parts, std::string_view sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i > 0) out += sep;
    out += parts[i];
  }
  return out;
}

// "a and b", "a, b and c"
std::string join_and(const std::vector<std::string>& parts) {
  if (parts.size() <= 1) return join(parts, "");
  std::vector<std::string> head(parts.begin(), parts.end() - 1);
  return join(head, ", ") + " and " + parts.back();
}

fs::path normalized(const fs::path& p) {
  std::error_code ec;
  fs::path out = fs::weakly_canonical(p, ec);
  if (!ec) return out;
  out = fs::absolute(p, ec);
  return ec ? p.lexically_normal() : out.lexically_normal();
}

}  // namespace

// ------------------------------------------------------------------------- LoadedPlugin ---

moeq_shutdown_fn LoadedPlugin::shutdown() const {
  if (api == nullptr || api->struct_size < MOEQ_STRUCT_SIZE(moeq_plugin_api, shutdown)) return nullptr;
  return api->shutdown;
}

moeq_describe_fn LoadedPlugin::describe() const {
  if (api == nullptr || api->struct_size < MOEQ_STRUCT_SIZE(moeq_plugin_api, describe)) return nullptr;
  return api->describe;
}

// ----------------------------------------------------------------------------- Registry ---

PluginTrust PluginTrust::from_environment() {
  PluginTrust t;
  const char* allow = std::getenv("MOEQ_ALLOW_UNTRUSTED_PLUGINS");
  t.allow_untrusted = allow != nullptr && std::string_view(allow) == "1";
  if (const char* manifest = std::getenv("MOEQ_PLUGIN_MANIFEST"); manifest != nullptr && *manifest != '\0')
    t.manifest = manifest;
  t.owner_uid = static_cast<uint32_t>(::geteuid());
  return t;
}

Registry::Registry(const moeq_host_api* host, PluginTrust trust) : host_(host), trust_(std::move(trust)) {
  MOEQ_CHECK(host_ != nullptr, "Registry needs the host services table (got NULL)");
  if (trust_.allow_untrusted && host_->log != nullptr)
    host_->log(MOEQ_LOG_LEVEL_WARNING, kLogSource,
               "plugin ownership and permission checks are off (MOEQ_ALLOW_UNTRUSTED_PLUGINS=1 or "
               "--allow-untrusted-plugins): every plugin that fails them is loaded and logged");
}

Registry::~Registry() {
  host::clear_registry_if(this);  // delegation must not find a destroyed registry
  // Reverse load order: a plugin that delegates is shut down before what it delegates to.
  for (auto it = plugins_.rbegin(); it != plugins_.rend(); ++it) {
    if (moeq_shutdown_fn fn = (*it)->shutdown()) {
      try {
        fn();
      } catch (...) {
        // NOTE: nothing may cross the ABI; a plugin that throws anyway is not allowed to
        // take the process down from a destructor.
      }
    }
  }
  // libraries_ only drops references; keep_forever holds every library, so nothing unloads.
}

namespace {

void host_log(const moeq_host_api* host, moeq_log_level level, const std::string& message) {
  if (host != nullptr && host->log != nullptr) host->log(level, kLogSource, message.c_str());
}

// The status's message; destroys the status.
std::string take_message(const moeq_host_api* host, moeq_status* status) {
  std::string message;
  if (host->status_message != nullptr) {
    const char* m = host->status_message(status);
    if (m != nullptr) message = m;
  }
  if (host->status_destroy != nullptr) host->status_destroy(status);
  return message;
}

}  // namespace

const LoadedPlugin* Registry::load_file(const fs::path& file) {
  auto refuse = [&](std::string reason) -> const LoadedPlugin* {
    host_log(host_, MOEQ_LOG_LEVEL_WARNING, "refused plugin " + file.string() + ": " + reason);
    refusals_.push_back(PluginRefusal{file, std::move(reason)});
    refused_files_.push_back(RefusedFile{file, refusals_.size() - 1});
    return nullptr;
  };

  // (a) Checks on the file itself: what it is, who owns it and who may write it, where it is
  // named and where it really lives (a symlink's target).
  std::error_code ec;
  const fs::file_status st = fs::status(file, ec);
  if (ec && ec != std::errc::no_such_file_or_directory)
    return refuse("cannot stat: " + ec.message());
  if (ec || !fs::exists(st)) return refuse("no such file");
  if (!fs::is_regular_file(st)) return refuse("not a regular file");
  const fs::path real = fs::canonical(file, ec);
  if (ec) return refuse("cannot resolve the path: " + ec.message());
  const fs::path named_dir = fs::absolute(file, ec).lexically_normal().parent_path();
  const uint32_t uid = trust_.owner_uid;
  std::vector<std::string> trust_checks = {trust::path_problem(real, "file", uid),
                                           trust::path_problem(real.parent_path(), "directory", uid),
                                           trust::ancestors_problem(real.parent_path(), "the plugin", uid)};
  if (!named_dir.empty() && named_dir != real.parent_path()) {
    trust_checks.push_back(trust::path_problem(named_dir, "directory", uid));
    trust_checks.push_back(trust::ancestors_problem(named_dir, "the plugin", uid));
  }
  for (const std::string& problem : trust_checks)
    if (std::string why = trust_problem(problem, file); !why.empty()) return refuse(why);

  // (b) Read the export table without running any of the file's code.
  if (std::string why = elf_magic_problem(file); !why.empty()) {
    return refuse("not a shared object: " + why);
  }
  std::vector<std::string> symbols;
  try {
    boost::dll::library_info info(file);
    symbols = info.symbols();
  } catch (const std::ios_base::failure&) {
    // Boost.DLL reports a short or corrupt file as a bare stream error; say what it means.
    return refuse("not a shared object: cannot read its ELF headers (truncated or corrupt file)");
  } catch (const std::exception& e) {
    return refuse(std::string("not a shared object: ") + e.what());
  }
  if (std::find(symbols.begin(), symbols.end(), MOEQ_PLUGIN_ENTRY_SYMBOL) == symbols.end()) {
    return refuse("does not export " MOEQ_PLUGIN_ENTRY_SYMBOL);
  }
  // What the loader would pull in with it (RPATH, RUNPATH, $ORIGIN, a NEEDED path) runs as
  // surely as the file itself: the dynamic segment is read here and each of those passes the
  // same checks, before dlopen can run any of it.
  for (const std::string& problem : trust::dependency_problems(file, uid))
    if (std::string why = trust_problem(problem, file); !why.empty()) return refuse(why);
  // The allow-list last: a file that is no plugin at all is better told so than "not pinned".
  if (std::string why = manifest_problem(file); !why.empty()) return refuse(why);

  // (c) Load. rtld_now: a missing symbol fails here, not on the first call in a hot path;
  // rtld_local: plugins cannot interpose each other's symbols.
  auto library = std::make_shared<boost::dll::shared_library>();
  std::error_code load_ec;
  dlerror();  // clear a stale message so the one below is about this file
  library->load(file, boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local, load_ec);
  if (load_ec || !library->is_loaded()) {
    const char* dl_message = dlerror();
    return refuse(std::string("cannot load: ") + (dl_message ? dl_message : load_ec.message()));
  }
  keep_forever(library);
  libraries_.push_back(library);

  if (!library->has(MOEQ_PLUGIN_ENTRY_SYMBOL)) {
    return refuse("lists " MOEQ_PLUGIN_ENTRY_SYMBOL " but the loader cannot resolve it");
  }
  EntryFn& entry = library->get<EntryFn>(MOEQ_PLUGIN_ENTRY_SYMBOL);

  // (d) Validate the descriptor.
  const moeq_plugin_descriptor* descriptor = nullptr;
  try {
    descriptor = entry();
  } catch (...) {
    return refuse(MOEQ_PLUGIN_ENTRY_SYMBOL " threw a C++ exception (nothing may cross the ABI)");
  }
  const LoadedPlugin* plugin = add(descriptor, file);
  if (plugin == nullptr)
    refused_files_.push_back(RefusedFile{file, refusals_.size() - 1});
  else
    note_replacement(file);
  return plugin;
}

void Registry::remember_refused_names(const fs::path& dir, size_t refusal) {
  // Listing runs none of their code; a directory that cannot be listed has nothing to name.
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    if (it->path().extension() == ".so") refused_files_.push_back(RefusedFile{it->path(), refusal});
}

void Registry::note_replacement(const fs::path& file) {
  for (const RefusedFile& earlier : refused_files_) {
    if (earlier.file.filename() != file.filename() || earlier.file == file) continue;
    PluginRefusal& refusal = refusals_[earlier.refusal];
    host_log(host_, MOEQ_LOG_LEVEL_WARNING,
             "loaded " + file.string() + " in place of the same-named " + earlier.file.string() +
                 ", which was refused: " + refusal.reason);
    refusal.reason += "; " + file.string() + ", of the same file name, was loaded in its place";
  }
}

std::string Registry::validate(const moeq_plugin_descriptor* descriptor) { return check_descriptor(descriptor); }

const LoadedPlugin* Registry::add(const moeq_plugin_descriptor* descriptor, const fs::path& file) {
  auto refuse = [&](std::string reason) -> const LoadedPlugin* {
    host_log(host_, MOEQ_LOG_LEVEL_WARNING, "refused plugin " + file.string() + ": " + reason);
    refusals_.push_back(PluginRefusal{file, std::move(reason)});
    return nullptr;
  };
  if (std::string why = check_descriptor(descriptor); !why.empty()) return refuse(why);

  if (const LoadedPlugin* existing = find(descriptor->name)) {
    return refuse("plugin name '" + std::string(descriptor->name) + "' is already loaded from " +
                  existing->file.string() + "; refusing the second copy at " + file.string());
  }

  // (e) The plugin is used at the older of the two minors.
  auto plugin = std::make_unique<LoadedPlugin>();
  plugin->file = file;
  plugin->name = descriptor->name;
  plugin->version = descriptor->version;
  plugin->descriptor = descriptor;
  plugin->api = descriptor->api;
  plugin->effective_minor = std::min<uint32_t>(descriptor->abi_minor, MOEQ_ABI_MINOR);

  // (f) Initialize; a status is a refusal carrying the plugin's own words.
  moeq_initialize_args init{};
  init.struct_size = MOEQ_STRUCT_SIZE(moeq_initialize_args, host);
  init.host = host_;
  moeq_status* status = nullptr;
  try {
    status = plugin->api->initialize(&init);
  } catch (...) {
    return refuse("initialize threw a C++ exception (nothing may cross the ABI)");
  }
  if (status != nullptr) {
    std::string message = take_message(host_, status);
    if (message.empty()) message = "(the status has no message)";
    return refuse("initialize failed: " + message);
  }

  host_log(host_, MOEQ_LOG_LEVEL_INFO,
           "loaded plugin " + plugin->name + " " + plugin->version + " (ABI " +
               std::to_string(descriptor->abi_major) + "." + std::to_string(descriptor->abi_minor) +
               ", used at 1." + std::to_string(plugin->effective_minor) + ") from " + file.string());
  plugins_.push_back(std::move(plugin));
  return plugins_.back().get();
}

void Registry::load_directory(const fs::path& dir) {
  auto refuse = [&](std::string reason) {
    host_log(host_, MOEQ_LOG_LEVEL_WARNING, "plugin directory " + dir.string() + ": " + reason);
    refusals_.push_back(PluginRefusal{dir, std::move(reason)});
  };
  std::error_code ec;
  const fs::file_status st = fs::status(dir, ec);
  if (ec && ec != std::errc::no_such_file_or_directory) return refuse("cannot stat: " + ec.message());
  if (ec || !fs::exists(st)) return refuse("no such directory");
  if (!fs::is_directory(st)) return refuse("not a directory");
  const std::string problem = trust::directory_problem(dir, "directory", "the plugin directory", trust_.owner_uid);
  if (std::string why = trust_problem(problem, dir); !why.empty()) {
    refuse(why);
    remember_refused_names(dir, refusals_.size() - 1);
    return;
  }

  std::vector<fs::path> files;
  fs::directory_iterator it(dir, ec);
  if (ec) return refuse("cannot list: " + ec.message());
  for (const fs::directory_iterator end; it != end; it.increment(ec)) {
    if (ec) break;
    // Every *.so goes to load_file, which refuses what is not a regular file with a reason
    // (a directory, a FIFO, a symlink loop), instead of skipping it silently here.
    if (it->path().extension() == ".so") files.push_back(it->path());
  }
  if (ec) return refuse("cannot list: " + ec.message());
  std::sort(files.begin(), files.end(),
            [](const fs::path& a, const fs::path& b) { return a.filename() < b.filename(); });
  for (const fs::path& f : files) load_file(f);
}

std::string Registry::trust_problem(const std::string& problem, const fs::path& subject) {
  if (problem.empty()) return {};
  if (!trust_.allow_untrusted) return problem;
  host_log(host_, MOEQ_LOG_LEVEL_WARNING,
           "loading from " + subject.string() + " although " + problem + " (untrusted plugins allowed)");
  return {};
}

std::string Registry::manifest_problem(const fs::path& file) {
  if (!trust_.enforce_manifest) return {};
  fs::path manifest = trust_.manifest;
  if (manifest.empty()) {
    std::error_code ec;
    const fs::path local = fs::absolute(file, ec).lexically_normal().parent_path() / kPluginManifestName;
    if (!fs::exists(local, ec)) return {};  // no allow-list governs this directory
    manifest = local;
  }
  auto it = manifests_.find(manifest);
  if (it == manifests_.end()) {
    // The manifest decides what runs, so it is held to the same ownership rules as a plugin.
    std::error_code ec;
    if (!fs::is_regular_file(manifest, ec))
      return "plugin manifest " + manifest.string() + " (MOEQ_PLUGIN_MANIFEST) does not exist or is not a file";
    if (std::string why = trust_problem(trust::path_problem(manifest, "plugin manifest", trust_.owner_uid), manifest);
        !why.empty())
      return why;
    try {
      it = manifests_.emplace(manifest, PluginManifest::read(manifest)).first;
    } catch (const Error& e) {
      return e.what();
    }
  }
  std::string digest;
  try {
    digest = sha256_file_hex(file);
  } catch (const Error& e) {
    return e.what();
  }
  return it->second.check(file, digest);
}

std::vector<fs::path> Registry::search_path(const std::optional<fs::path>& plugin_dir) {
  std::vector<fs::path> candidates;
  if (plugin_dir && !plugin_dir->empty()) candidates.push_back(*plugin_dir);
  if (const char* env = std::getenv("MOEQ_PLUGIN_PATH")) {
    std::string_view rest(env);
    while (!rest.empty()) {
      const size_t colon = rest.find(':');
      const std::string_view entry = rest.substr(0, colon);
      if (!entry.empty()) candidates.emplace_back(std::string(entry));
      if (colon == std::string_view::npos) break;
      rest.remove_prefix(colon + 1);
    }
  }
  std::error_code ec;
  const fs::path exe = boost::dll::program_location(ec);
  if (!ec && !exe.empty()) {
    candidates.push_back(exe.parent_path() / ".." / "plugins");  // build tree: build/bin, build/plugins
    candidates.push_back(exe.parent_path() / ".." / "lib" / "moeq" / "plugins");  // cmake --install layout
  }

  std::vector<fs::path> out;
  for (const fs::path& c : candidates) {
    fs::path n = normalized(c);
    if (std::find(out.begin(), out.end(), n) == out.end()) out.push_back(std::move(n));
  }
  return out;
}

std::vector<std::string> Registry::missing_dependencies() const {
  std::vector<std::string> lines;
  for (const auto& p : plugins_) {
    for (size_t i = 0; i < p->descriptor->num_requires_plugins; ++i) {
      const char* dep = p->descriptor->requires_plugins[i];
      if (find(dep) == nullptr) {
        lines.push_back(p->name + " needs plugin " + dep + ", which is not loaded");
      }
    }
  }
  return lines;
}

const LoadedPlugin* Registry::find(std::string_view name) const {
  for (const auto& p : plugins_) {
    if (p->name == name) return p.get();
  }
  return nullptr;
}

std::vector<ProbeResult> Registry::probe_all(const ProbeQuery& query) const {
  std::vector<ProbeResult> results;
  results.reserve(plugins_.size());
  for (const auto& p : plugins_) {
    ProbeResult r;
    r.plugin = p.get();
    std::array<char, kProbeReasonCapacity> reason{};
    moeq_probe_args args{};
    args.struct_size = MOEQ_STRUCT_SIZE(moeq_probe_args, reason_capacity);
    args.quant_config_json = query.quant_config_json.c_str();
    args.quant_config_source = query.quant_config_source.c_str();
    args.layer_name = query.layer_name.c_str();
    args.weight_dtype = query.weight_dtype.c_str();
    args.score = 0;
    args.reason = reason.data();
    args.reason_capacity = reason.size();
    moeq_status* status = nullptr;
    bool threw = false;
    try {
      status = p->api->probe(&args);
    } catch (...) {
      threw = true;
    }
    reason.back() = '\0';  // the plugin may have filled the buffer without terminating it
    if (threw) {
      r.score = 0;
      r.reason = "probe threw a C++ exception (nothing may cross the ABI)";
    } else if (status != nullptr) {
      r.score = 0;
      r.reason = take_message(host_, status);
      if (r.reason.empty()) r.reason = "probe failed without a message";
    } else if (args.score < 0) {
      r.score = 0;
      r.reason = "probe returned a negative score " + std::to_string(args.score);
    } else {
      r.score = args.score;
      r.reason = reason.data();
      if (r.reason.empty()) {
        r.reason = r.score == 0 ? "declined without a reason"
                                : "claims the layer with score " + std::to_string(r.score);
      }
    }
    results.push_back(std::move(r));
  }
  return results;
}

Selection Registry::select(const ProbeQuery& query, std::string_view pin) const {
  const std::string layer = query.layer_name.empty() ? "(unnamed layer)" : query.layer_name;
  Selection sel;
  sel.probes = probe_all(query);

  if (!pin.empty()) {
    const LoadedPlugin* pinned = find(pin);
    if (pinned == nullptr) {
      std::vector<std::string> names;
      for (const auto& p : plugins_) names.push_back(p->name);
      fail(MOEQ_STATUS_CODE_NOT_FOUND, "pinned plugin " + std::string(pin) +
                                           " is not loaded (loaded: " +
                                           (names.empty() ? std::string("none") : join(names, ", ")) +
                                           ")");
    }
    for (const ProbeResult& r : sel.probes) {
      if (r.plugin != pinned) continue;
      if (r.score <= 0) fail("pinned plugin " + pinned->name + " declines: " + r.reason);
      sel.chosen = pinned;
      sel.why = "pinned by the user";
      return sel;
    }
  }

  if (sel.probes.empty()) {
    fail(MOEQ_STATUS_CODE_NOT_FOUND, "no plugin takes layer " + layer + ": no plugin is loaded");
  }
  int32_t best = 0;
  for (const ProbeResult& r : sel.probes) best = std::max(best, r.score);
  if (best <= 0) {
    std::vector<std::string> declines;
    for (const ProbeResult& r : sel.probes) declines.push_back(r.plugin->name + ": " + r.reason);
    fail(MOEQ_STATUS_CODE_NOT_FOUND, "no plugin takes layer " + layer + ": " + join(declines, "; "));
  }
  std::vector<std::string> top;
  for (const ProbeResult& r : sel.probes) {
    if (r.score == best) {
      if (sel.chosen == nullptr) sel.chosen = r.plugin;
      top.push_back(r.plugin->name);
    }
  }
  if (top.size() > 1) {
    // The host breaks no ties (abi.h): a silent pick would hide a real ambiguity.
    fail("plugins " + join_and(top) + (top.size() == 2 ? " both" : " all") + " claim layer " +
         layer + " with score " + std::to_string(best) + "; pin one");
  }
  sel.why = "highest score " + std::to_string(best);
  return sel;
}

}  // namespace moeq
