// The bad-input catalogue (tests/bad_inputs/catalogue.json). Each case makes a good checkpoint
// with the writer (or a private plugin directory from the built plugins), damages it as the
// case says, and checks that the load fails with the expected text, that nothing is left behind
// (statuses, parameter bytes; ASan and LSan see the rest) and that no layer of a failed load
// stays registered. One TEST_CASE per area, one SUBCASE per catalogue entry.
#include "fuzz/strict_load_case.hpp"
#include "support.hpp"

#include <moeq/checkpoint.hpp>
#include <moeq/expert_name_router.hpp>
#include <moeq_writer/producers.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <limits>
#include <regex>
#include <set>
#include <span>

using namespace moeq;
using namespace moeq::test;
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

const fs::path kCatalogue = fs::path(MOEQ_TEST_FIXTURE_DIR) / ".." / "bad_inputs" / "catalogue.json";

std::string str(const json::value& v) { return std::string(v.as_string()); }
std::string str_or(const json::object& o, const char* key, const std::string& fallback = "") {
  const json::value* v = o.if_contains(key);
  return v != nullptr && v->is_string() ? str(*v) : fallback;
}
int64_t int_or(const json::object& o, const char* key, int64_t fallback) {
  const json::value* v = o.if_contains(key);
  return v != nullptr ? v->to_number<int64_t>() : fallback;
}

std::vector<json::object> catalogue() {
  const json::value root = read_json_file(kCatalogue);
  std::vector<json::object> out;
  for (const json::value& c : root.as_object().at("cases").as_array()) out.push_back(c.as_object());
  return out;
}

// ------------------------------------------------------------------ good inputs to damage
writer::MoeSpec tiny_spec(writer::Layout layout) {
  writer::MoeSpec s;
  s.layout = layout;
  s.num_layers = 2;  // layer 0 stays good: a failure in layer 1 must release layer 0 too
  s.num_experts = 4;
  s.hidden = 32;
  s.intermediate = 16;
  s.top_k = 2;
  s.seed = 8;
  return s;
}

using FileTensors = std::map<std::string, EditableTensor>;

FileTensors read_tensors(const fs::path& file) {
  FileTensors m;
  auto st = SafetensorsFile::open(file);
  for (const auto& [name, t] : st->tensors())
    m[name] = {t.dtype, t.shape, std::vector<std::byte>(t.data, t.data + t.nbytes())};
  return m;
}

void write_tensors(const fs::path& file, const FileTensors& m) {
  writer::SafetensorsWriter w;
  for (const auto& [name, t] : m) w.add(name, t.dtype, t.shape, t.bytes);
  fs::remove(file);
  w.write(file);
}

json::object read_object(const fs::path& file) { return read_json_file(file).as_object(); }
void write_json(const fs::path& file, const json::value& v) { write_text(file, json::serialize(v)); }

// Per-expert tensors of layer 1 in the second shard, everything else in the first.
void shard(const fs::path& dir) {
  FileTensors all = read_tensors(dir / "model.safetensors"), parts[2];
  json::object map;
  const char* names[2] = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
  for (auto& [name, t] : all) {
    const int k = name.rfind("model.layers.1.", 0) == 0 ? 1 : 0;
    parts[k][name] = std::move(t);
    map[name] = names[k];
  }
  fs::remove(dir / "model.safetensors");
  for (int k = 0; k < 2; ++k) write_tensors(dir / names[k], parts[k]);
  write_json(dir / "model.safetensors.index.json", json::object{{"metadata", json::object{}}, {"weight_map", map}});
}

void make_base(const std::string& base, const fs::path& dir) {
  const bool granite = base == "granite";
  writer::write_ct_fp8_channel(dir, tiny_spec(granite ? writer::Layout::kGraniteFused : writer::Layout::kPerExpert));
  if (base == "sharded") shard(dir);
}

// ------------------------------------------------------------------ damage
std::vector<fs::path> safetensors_files(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".safetensors" && e.is_regular_file()) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

// The file that holds `tensor` (REQUIREd to exist).
fs::path file_with(const fs::path& dir, const std::string& tensor) {
  for (const fs::path& f : safetensors_files(dir))
    if (read_tensors(f).contains(tensor)) return f;
  FAIL("catalogue: no file holds tensor " << tensor);
  return {};
}

float value_of(const json::value& v) {
  if (v.is_string()) {
    const std::string s = str(v);
    if (s == "nan") return std::numeric_limits<float>::quiet_NaN();
    if (s == "inf") return std::numeric_limits<float>::infinity();
    if (s == "-inf") return -std::numeric_limits<float>::infinity();
    FAIL("catalogue: bad value " << s);
  }
  return v.to_number<float>();
}

std::vector<int64_t> shape_of(const json::value& v) {
  std::vector<int64_t> s;
  for (const json::value& d : v.as_array()) s.push_back(d.to_number<int64_t>());
  return s;
}

int64_t numel(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

// Walks a dotted path ("quantization_config.config_groups.group_0.weights") to the parent.
json::object& parent_of(json::object& root, const std::string& path, std::string& leaf) {
  json::object* o = &root;
  size_t start = 0;
  for (size_t dot; (dot = path.find('.', start)) != std::string::npos; start = dot + 1) {
    json::value& next = (*o)[path.substr(start, dot - start)];
    if (!next.is_object()) next = json::object{};
    o = &next.as_object();
  }
  leaf = path.substr(start);
  return *o;
}

// A raw safetensors image: u64 length (the real one unless given), header text, data bytes.
void write_raw_safetensors(const fs::path& file, const std::string& header, uint64_t data_bytes,
                           std::optional<uint64_t> header_len) {
  std::string bytes;
  const uint64_t len = header_len.value_or(header.size());
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
  bytes += header;
  bytes.append(static_cast<size_t>(data_bytes), '\x01');
  write_text(file, bytes);
}

// Rewrites one entry of a file's header in place of the validated writer output; the data
// section is kept byte for byte.
void patch_header(const fs::path& file, const std::string& tensor, const std::string& key, const json::value& value) {
  const std::string bytes = read_text(file);
  uint64_t len = 0;
  for (int i = 7; i >= 0; --i) len = (len << 8) | static_cast<unsigned char>(bytes[i]);
  json::object header = json::parse(bytes.substr(8, len)).as_object();
  header.at(tensor).as_object()[key] = value;
  const std::string text = json::serialize(header);
  write_raw_safetensors(file, text, 0, std::nullopt);
  std::ofstream(file, std::ios::binary | std::ios::app) << bytes.substr(8 + len);
}

void apply_checkpoint_op(const fs::path& dir, const json::object& op) {
  const std::string kind = str(op.at("op"));
  const fs::path file = dir / str_or(op, "file", "model.safetensors");
  if (kind == "set_element" || kind == "drop" || kind == "reshape" || kind == "retype" || kind == "rename") {
    const std::string tensor = str(op.at("tensor"));
    const fs::path f = file_with(dir, tensor);
    FileTensors m = read_tensors(f);
    EditableTensor& t = m.at(tensor);
    if (kind == "set_element") {
      set_element(t, static_cast<size_t>(int_or(op, "index", 0)), value_of(op.at("value")));
    } else if (kind == "drop") {
      m.erase(tensor);
    } else if (kind == "rename") {
      EditableTensor moved = t;
      m.erase(tensor);
      m[str(op.at("to"))] = std::move(moved);
    } else if (kind == "reshape") {  // new element count: elements repeat cyclically
      const std::vector<int64_t> shape = shape_of(op.at("shape"));
      const size_t es = dtype_size(t.dtype), old_bytes = t.bytes.size();
      std::vector<std::byte> bytes(static_cast<size_t>(numel(shape)) * es);
      for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = t.bytes[old_bytes ? i % old_bytes : 0];
      t.shape = shape;
      t.bytes = std::move(bytes);
    } else {  // retype: values converted through float
      const DType to = *parse_dtype(str(op.at("dtype")));
      std::vector<std::byte> bytes(static_cast<size_t>(numel(t.shape)) * dtype_size(to));
      for (size_t i = 0; i < static_cast<size_t>(numel(t.shape)); ++i)
        store_from_float(bytes.data(), to, i, load_as_float(t.bytes.data(), t.dtype, i));
      t.dtype = to;
      t.bytes = std::move(bytes);
    }
    write_tensors(f, m);
  } else if (kind == "add") {
    const std::vector<int64_t> shape = shape_of(op.at("shape"));
    EditableTensor t{*parse_dtype(str_or(op, "dtype", "F32")), shape, {}};
    t.bytes.resize(static_cast<size_t>(numel(shape)) * dtype_size(t.dtype));
    for (size_t i = 0; i < static_cast<size_t>(numel(shape)); ++i)
      store_from_float(t.bytes.data(), t.dtype, i, op.contains("fill") ? value_of(op.at("fill")) : 1.0f);
    FileTensors m = read_tensors(file);
    m[str(op.at("tensor"))] = std::move(t);
    write_tensors(file, m);
  } else if (kind == "copy_tensor") {  // into another file: the same tensor twice
    const std::string tensor = str(op.at("tensor"));
    const EditableTensor t = read_tensors(file_with(dir, tensor)).at(tensor);
    FileTensors m = read_tensors(dir / str(op.at("to")));
    m[tensor] = t;
    write_tensors(dir / str(op.at("to")), m);
  } else if (kind == "drop_matching") {
    const std::regex pattern(str(op.at("pattern")));
    for (const fs::path& f : safetensors_files(dir)) {
      FileTensors m = read_tensors(f);
      std::erase_if(m, [&](const auto& kv) { return std::regex_search(kv.first, pattern); });
      write_tensors(f, m);
    }
  } else if (kind == "config_set" || kind == "config_erase") {
    const fs::path cfg = dir / str_or(op, "file", "config.json");
    json::object root = read_object(cfg);
    std::string leaf;
    json::object& parent = parent_of(root, str(op.at("path")), leaf);
    if (kind == "config_set")
      parent[leaf] = op.at("value");
    else
      parent.erase(leaf);
    write_json(cfg, root);
  } else if (kind == "index_set" || kind == "index_erase") {
    const fs::path index = dir / "model.safetensors.index.json";
    json::object root = read_object(index);
    json::object& map = root.at("weight_map").as_object();
    if (kind == "index_set")
      map[str(op.at("tensor"))] = op.at("shard");
    else
      map.erase(str(op.at("tensor")));
    write_json(index, root);
  } else if (kind == "write_file") {
    fs::remove(file);
    write_text(file, str(op.at("text")));
  } else if (kind == "write_safetensors") {
    const json::value& h = op.at("header");
    const std::string header = h.is_string() ? str(h) : json::serialize(h);
    std::optional<uint64_t> len;
    if (const json::value* l = op.if_contains("header_len")) len = l->to_number<uint64_t>();
    fs::remove(file);
    write_raw_safetensors(file, header, static_cast<uint64_t>(int_or(op, "data_bytes", 0)), len);
  } else if (kind == "patch_header") {
    const std::string tensor = str(op.at("tensor"));
    patch_header(file_with(dir, tensor), tensor, str(op.at("key")), op.at("value"));
  } else if (kind == "truncate") {
    const int64_t size = int_or(op, "size", 0);
    const auto now = static_cast<int64_t>(fs::file_size(file));
    fs::resize_file(file, static_cast<uintmax_t>(size >= 0 ? size : now + size));
  } else if (kind == "remove") {
    fs::remove(file);
  } else if (kind == "symlink") {
    fs::remove(file);
    fs::create_symlink(str(op.at("target")), file);
  } else if (kind == "fifo") {
    fs::remove(file);
    REQUIRE(::mkfifo(file.c_str(), 0600) == 0);
  } else if (kind == "mkdir") {
    fs::remove(file);
    fs::create_directory(file);
  } else {
    FAIL("catalogue: unknown checkpoint op " << kind);
  }
}

ReaderLimits limits_of(const json::object& c) {
  ReaderLimits l;
  if (const json::value* v = c.if_contains("limits")) {
    const json::object& o = v->as_object();
    l.max_header_bytes = static_cast<uint64_t>(int_or(o, "max_header_bytes", static_cast<int64_t>(l.max_header_bytes)));
    l.max_tensors_per_file = static_cast<size_t>(int_or(o, "max_tensors_per_file", static_cast<int64_t>(l.max_tensors_per_file)));
    l.max_tensors = static_cast<size_t>(int_or(o, "max_tensors", static_cast<int64_t>(l.max_tensors)));
    l.max_files = static_cast<size_t>(int_or(o, "max_files", static_cast<int64_t>(l.max_files)));
    l.max_json_file_bytes = static_cast<uint64_t>(int_or(o, "max_json_file_bytes", static_cast<int64_t>(l.max_json_file_bytes)));
  }
  return l;
}

LoadOptions options_of(const json::object& c) {
  LoadOptions o;
  if (const json::value* v = c.if_contains("options")) {
    const json::object& j = v->as_object();
    o.placement.tp_size = static_cast<int>(int_or(j, "tp", 1));
    o.placement.ep_size = static_cast<int>(int_or(j, "ep", 1));
    o.pin_plugin = str_or(j, "pin");
  }
  return o;
}

void check_text(const std::string& message, const json::object& c) {
  // MOEQ_BAD_INPUTS_PRINT=1 prints every case's message (for writing the expect of a new case).
  if (std::getenv("MOEQ_BAD_INPUTS_PRINT") != nullptr) MESSAGE(str(c.at("id")) << ": " << message);
  INFO("message: " << message);
  CHECK_FALSE(message.empty());
  for (const json::value& e : c.at("expect").as_array()) {
    INFO("expected text: " << str(e));
    CHECK(message.find(str(e)) != std::string::npos);
  }
}

int64_t param_bytes(const LoadedModel& m) {
  int64_t n = 0;
  for (const auto& l : m.layers)
    for (const auto& p : l->layer->params) n += p->accounted_bytes;
  return n;
}

// One checkpoint case: damage, then the stage that must fail, then the leak and state checks.
void run_checkpoint_case(const json::object& c, const Registry& reg) {
  const int64_t statuses = host::live_statuses(), bytes = host::live_param_bytes();
  TempDir tmp("moeq_bad");
  const fs::path dir = tmp / "ckpt";
  make_base(str_or(c, "base", "per_expert"), dir);
  for (const json::value& op : c.at("damage").as_array()) apply_checkpoint_op(dir, op.as_object());
  const std::string stage = str(c.at("stage"));
  const ReaderLimits limits = limits_of(c);
  std::string message;
  if (stage == "open") {
    message = error_of([&] { Checkpoint::open(dir, limits); });
  } else {
    REQUIRE(stage == "load");
    std::optional<Checkpoint> ck;
    try {
      ck.emplace(Checkpoint::open(dir, limits));
    } catch (const Error& e) {
      FAIL("the checkpoint should open and fail to load, but open failed: " << e.what());
    }
    message = error_of([&] { load_model(*ck, reg, options_of(c)); });
    CHECK(host::live_param_bytes() == bytes);  // the strict load threw: nothing of it stays
    // collect_errors keeps the good layers and must hold nothing of the failed ones.
    LoadOptions collect = options_of(c);
    collect.collect_errors = true;
    try {
      LoadedModel m = load_model(*ck, reg, collect);
      CHECK_FALSE(m.failed.empty());
      for (const auto& l : m.layers) CHECK(l->report.ok());
      CHECK(host::live_param_bytes() - bytes == param_bytes(m));
    } catch (const Error&) {
      // failures before any layer (geometry, placement) throw even when collecting
    }
  }
  check_text(message, c);
  CHECK(host::live_param_bytes() == bytes);
  CHECK(host::live_statuses() == statuses);
}

// ------------------------------------------------------------------ plugin directories
// A file of another owner: root can make one; anyone else tells the registry that the trusted
// owner is some other uid, which makes their own files foreign.
void make_foreign(const fs::path& p, PluginTrust& trust) {
  if (::geteuid() == 0)
    REQUIRE(::lchown(p.c_str(), 65534, 65534) == 0);
  else
    trust.owner_uid = static_cast<uint32_t>(::geteuid()) + 1;
}

fs::path source_plugin(const std::string& spec) {
  if (spec.rfind("builtin:", 0) == 0) return fs::path(MOEQ_TEST_PLUGIN_DIR) / ("libmoeq_" + spec.substr(8) + ".so");
  REQUIRE(spec.rfind("test:", 0) == 0);
  return fs::path(MOEQ_TEST_BAD_PLUGIN_DIR) / (spec.substr(5) + ".so");
}

void run_plugin_case(const json::object& c) {
  const int64_t statuses = host::live_statuses();
  TempDir tmp("moeq_bad_plugins");
  const fs::path pdir = tmp / "plugins", other = tmp / "elsewhere";
  fs::create_directories(pdir);
  fs::create_directories(other);
  fs::permissions(pdir, fs::perms::owner_all);
  fs::permissions(other, fs::perms::owner_all);
  PluginTrust trust;
  trust.owner_uid = static_cast<uint32_t>(::geteuid());
  auto at = [&](const json::object& op) {
    const std::string p = str_or(op, "path", str_or(op, "as", "."));
    return p.rfind("{elsewhere}/", 0) == 0 ? other / p.substr(12) : pdir / p;
  };
  for (const json::value& v : c.at("damage").as_array()) {
    const json::object& op = v.as_object();
    const std::string kind = str(op.at("op"));
    if (kind == "plugin_copy") {
      fs::copy_file(source_plugin(str(op.at("from"))), at(op));
      fs::permissions(at(op), fs::perms::owner_read | fs::perms::owner_write | fs::perms::owner_exec);
    } else if (kind == "plugin_write") {
      write_text(at(op), str(op.at("text")));
    } else if (kind == "truncate") {
      fs::resize_file(at(op), static_cast<uintmax_t>(int_or(op, "size", 0)));
    } else if (kind == "chmod") {
      fs::permissions(at(op), static_cast<fs::perms>(std::stoi(str(op.at("mode")), nullptr, 8)));
    } else if (kind == "chown_other") {
      make_foreign(at(op), trust);
    } else if (kind == "symlink") {
      const std::string target = str(op.at("target"));
      fs::create_symlink(target.rfind("{elsewhere}/", 0) == 0 ? other / target.substr(12) : fs::path(target), at(op));
    } else if (kind == "mkdir") {
      fs::create_directory(at(op));
    } else if (kind == "manifest") {
      std::string text = str_or(op, "text");
      if (const json::value* entries = op.if_contains("entries"))
        for (const json::value& e : entries->as_array()) {
          const json::object& eo = e.as_object();
          const std::string digest = str(eo.at("sha256"));
          text += (digest == "actual" ? sha256_file_hex(pdir / str(eo.at("as"))) : digest) + "  " + str(eo.at("as")) + "\n";
        }
      write_text(pdir / kPluginManifestName, text);
      fs::permissions(pdir / kPluginManifestName, static_cast<fs::perms>(std::stoi(str_or(op, "mode", "0644"), nullptr, 8)));
    } else {
      FAIL("catalogue: unknown plugin op " << kind);
    }
  }
  {
    Registry reg(host::api(), trust);
    reg.load_directory(pdir);
    CHECK(reg.plugins().empty());  // nothing from a refused file is registered
    std::string reasons;
    for (const PluginRefusal& r : reg.refusals()) reasons += r.file.string() + ": " + r.reason + "\n";
    check_text(reasons, c);
  }
  CHECK(host::live_statuses() == statuses);
  std::error_code ec;  // let TempDir remove what was made foreign or read-only
  fs::permissions(pdir, fs::perms::owner_all, ec);
}

void run_area(const std::string& area) {
  const auto previous = host::set_log_sink([](moeq_log_level, const std::string&, const std::string&) {});
  BuiltPlugins plugins;
  int n = 0;
  for (const json::object& c : catalogue()) {
    if (str(c.at("area")) != area) continue;
    ++n;
    const std::string id = str(c.at("id"));
    SUBCASE(id.c_str()) {
      CAPTURE(id);
      INFO(str_or(c, "what"));
      if (str(c.at("stage")) == "plugin")
        run_plugin_case(c);
      else
        run_checkpoint_case(c, plugins.registry());
    }
  }
  CHECK(n > 0);
  // After every failure above, the process still loads a good checkpoint.
  if (area != "plugins") {
    TempDir tmp("moeq_bad_clean");
    make_base("per_expert", tmp / "ckpt");
    LoadedModel m = load_dir(tmp / "ckpt", plugins.registry());
    CHECK(m.layers.size() == 2);
  }
  host::set_log_sink(previous);
}

}  // namespace

TEST_CASE("the bad-input catalogue holds at least 40 cases with unique ids over four areas") {
  std::set<std::string> ids, areas;
  for (const json::object& c : catalogue()) {
    CHECK(ids.insert(str(c.at("id"))).second);
    areas.insert(str(c.at("area")));
    CHECK_FALSE(c.at("expect").as_array().empty());
  }
  CHECK(ids.size() >= 40);
  CHECK(areas == std::set<std::string>{"configs", "files", "plugins", "tensors"});
}

// Every input a fuzzer crashed on (tests/fuzz/regressions/<target>-<what>) goes through the
// same code as in its fuzz target, here in the ordinary (and the sanitizer) test build.
TEST_CASE("fuzz regressions: every committed crash input now fails cleanly or passes") {
  const fs::path dir = fs::path(MOEQ_TEST_FIXTURE_DIR) / ".." / "fuzz" / "regressions";
  int n = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string(), bytes = read_text(entry.path());
    CAPTURE(name);
    ++n;
    const std::string target = name.substr(0, name.find('-'));
    if (target == "expert_name_router") {
      const RoutedName r = route_tensor_name(bytes);
      CHECK((r.role != TensorRole::kExpert || r.layer >= 0));
    } else if (target == "safetensors_header") {
      try {
        parse_safetensors(std::as_bytes(std::span(bytes)), name);
      } catch (const Error&) {
      }
    } else if (target == "shard_index") {  // the strict reader and the one-pass one agree, as the target checks
      std::string strict_error, fast_error;
      std::map<std::string, std::string> strict, fast;
      try {
        strict = weight_map_of(parse_json_strict(bytes, "'" + name + "'"), name);
      } catch (const Error& e) {
        strict_error = e.what();
      }
      try {
        fast = parse_weight_map(bytes, name);
      } catch (const Error& e) {
        fast_error = e.what();
      }
      CHECK(fast_error == strict_error);
      CHECK(fast == strict);
    } else if (target == "quant_config") {  // every plugin's probe, as the fuzz target does
      BuiltPlugins plugins;
      json::value root;
      try {
        root = parse_json_strict(bytes, name);
      } catch (const Error&) {
        continue;
      }
      const json::object empty;
      ProbeQuery q;
      const QuantConfigSource src = select_quant_config(root.is_object() ? root.as_object() : empty, nullptr);
      q.quant_config_json = src.json;
      q.quant_config_source = src.source;
      q.layer_name = "model.layers.0.mlp.experts";
      q.weight_dtype = "F8_E4M3";
      for (const ProbeResult& r : plugins.registry().probe_all(q)) CHECK_FALSE(r.reason.empty());
    } else if (target == "strict_load") {  // the target's own driver, over this build's plugins
      BuiltPlugins plugins;
      TempDir tmp("moeq_fuzz_strict_load");
      fuzz::run_strict_load(bytes, plugins.registry(), tmp.path());
    } else {
      FAIL("no regression driver for fuzz target " << target << " (add one here)");
    }
  }
  CHECK(n > 0);
}

TEST_CASE("bad inputs: files (truncated, overlapping, oversized, symlink loops, shards, limits)") { run_area("files"); }
TEST_CASE("bad inputs: configs (geometry, quantization config)") { run_area("configs"); }
TEST_CASE("bad inputs: tensors (scales, shapes, dtypes, unknown and missing tensors)") { run_area("tensors"); }
TEST_CASE("bad inputs: plugins (no entry symbol, not ELF, permissions, owner, manifest)") { run_area("plugins"); }
