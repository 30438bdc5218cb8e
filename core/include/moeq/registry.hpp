// Plugin registry: discovery, checks before and after loading, probe-based selection.
// Every refusal and every decline carries a human reason (ggml's silent fallback is the
// complaint we do not repeat).
#pragma once
#include <moeq/abi.h>
#include <moeq/plugin_manifest.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moeq {

struct LoadedPlugin {
  std::filesystem::path file;
  std::string name;
  std::string version;
  const moeq_plugin_descriptor* descriptor = nullptr;
  const moeq_plugin_api* api = nullptr;
  uint32_t effective_minor = 0;  // min(plugin abi_minor, host MOEQ_ABI_MINOR)
  // Optional slots are reachable only through these (NULL when absent or newer than the host).
  moeq_shutdown_fn shutdown() const;
  moeq_describe_fn describe() const;
};

struct PluginRefusal {
  std::filesystem::path file;
  std::string reason;  // one line, e.g. "ABI major 2, this host speaks 1"
};

struct ProbeQuery {
  std::string quant_config_json = "null";
  std::string quant_config_source = "none";
  std::string layer_name;
  std::string weight_dtype;
};

struct ProbeResult {
  const LoadedPlugin* plugin = nullptr;
  int32_t score = 0;
  std::string reason;  // why it declined (or what it claims when it accepts)
};

struct Selection {
  const LoadedPlugin* chosen = nullptr;  // never NULL when select() returns
  std::string why;                       // "highest score 10", "pinned by the user"
  std::vector<ProbeResult> probes;       // every plugin's answer, in load order
};

// Which plugin files the registry trusts enough to run (docs/DESIGN.md §4). Without the override a
// plugin file, and the directory it is named in and the one it really lives in, must be owned
// by root or by `owner_uid` and writable by nobody else (group or others); every directory
// above them must be owned by root or `owner_uid` and writable by nobody else unless its
// sticky bit is set. The libraries the loader would pull in through the plugin's RPATH,
// RUNPATH or $ORIGIN, and those directories, are held to the same rules (file_trust.hpp).
struct PluginTrust {
  // Development override: load files that fail the ownership and permission checks, logging
  // each one with what the check found (MOEQ_ALLOW_UNTRUSTED_PLUGINS=1, or
  // `moeq --allow-untrusted-plugins`). The entry symbol and the manifest are still checked.
  bool allow_untrusted = false;
  // The allow-list (plugin_manifest.hpp). Set (MOEQ_PLUGIN_MANIFEST): that one file governs
  // every directory and must exist. Empty: a directory's own plugins.lock governs its plugins
  // when present; without one, any plugin that passes the other checks loads.
  std::filesystem::path manifest;
  // The user, besides root, who may own plugin files and directories: the effective uid.
  uint32_t owner_uid = 0;
  // Off only while `moeq plugins --pin` gathers the files it is about to pin.
  bool enforce_manifest = true;

  static PluginTrust from_environment();
};

class Registry {
 public:
  // `host` is handed to every plugin's initialize; it must outlive the registry.
  explicit Registry(const moeq_host_api* host, PluginTrust trust = PluginTrust::from_environment());
  ~Registry();  // calls shutdown of every plugin; never unloads the code (see docs/DESIGN.md §4)
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Loads every regular file ending in ".so" in `dir` (not recursive), in name order.
  // A missing directory is recorded as a refusal, never an exception.
  void load_directory(const std::filesystem::path& dir);
  // Returns the plugin or nullptr; on nullptr the reason is in refusals().
  const LoadedPlugin* load_file(const std::filesystem::path& file);
  // Adopts a descriptor whose code is already in the process (a plugin linked into the host, or
  // the proxy `moeq conform` puts around the plugin it tests): the checks of validate(), a
  // unique name, then initialize. `origin` names it in messages and refusals. Returns the plugin
  // or nullptr (reason in refusals()). load_file ends here.
  const LoadedPlugin* add(const moeq_plugin_descriptor* descriptor, const std::filesystem::path& origin);
  // What this host checks on a descriptor before using it (ABI major, sizes, minimum minor,
  // name, version, schemes, required slots): empty when acceptable, else the one-line refusal.
  // Runs no plugin code.
  static std::string validate(const moeq_plugin_descriptor* descriptor);

  // Search path: `plugin_dir` if given, then every entry of MOEQ_PLUGIN_PATH (':'-separated),
  // then the install-relative defaults <dir of the running executable>/../plugins (build tree)
  // and <dir of the running executable>/../lib/moeq/plugins (the `cmake --install` layout).
  static std::vector<std::filesystem::path> search_path(
      const std::optional<std::filesystem::path>& plugin_dir);

  const PluginTrust& trust() const { return trust_; }
  const std::vector<std::unique_ptr<LoadedPlugin>>& plugins() const { return plugins_; }
  const std::vector<PluginRefusal>& refusals() const { return refusals_; }
  // Lines such as "modelopt needs plugin compressed_tensors, which is not loaded".
  std::vector<std::string> missing_dependencies() const;
  const LoadedPlugin* find(std::string_view name) const;

  // Probes every plugin. Highest positive score wins; two plugins with the same highest score
  // is an Error naming both; no positive score is an Error listing every decline reason. A
  // non-empty `pin` chooses that plugin if it is loaded and does not decline (else Error
  // with its reason).
  Selection select(const ProbeQuery& query, std::string_view pin = {}) const;
  // Probe results only, never throws for declines (for `moeq plugins --why`).
  std::vector<ProbeResult> probe_all(const ProbeQuery& query) const;

 private:
  // Empty when `file` may load under the manifest that governs it, else the refusal.
  std::string manifest_problem(const std::filesystem::path& file);
  // Empty when trusted; with allow_untrusted, logs the problem and answers empty.
  std::string trust_problem(const std::string& problem, const std::filesystem::path& subject);
  // Records every *.so in a directory refused as a whole, under that directory's refusal.
  void remember_refused_names(const std::filesystem::path& dir, size_t refusal);
  // A file loaded under the name of one refused earlier (another search directory) is no
  // silent stand-in: logs which file won and why, and says so in the earlier refusal.
  void note_replacement(const std::filesystem::path& file);

  struct RefusedFile {
    std::filesystem::path file;
    size_t refusal = 0;  // index into refusals_ (a directory's refusal covers its files)
  };

  const moeq_host_api* host_;
  PluginTrust trust_;
  std::map<std::filesystem::path, PluginManifest> manifests_;  // read once per registry
  std::vector<std::unique_ptr<LoadedPlugin>> plugins_;
  std::vector<PluginRefusal> refusals_;
  std::vector<RefusedFile> refused_files_;
  std::vector<std::shared_ptr<void>> libraries_;  // kept alive for the registry's life
};

}  // namespace moeq
