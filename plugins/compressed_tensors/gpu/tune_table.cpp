#include "tune_table.hpp"

#include <moeq/error.hpp>

#include <boost/json.hpp>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <sstream>

namespace moeq::ct::gpu {
namespace json = boost::json;

namespace {

constexpr const char* kFormat = "moeq-ct-tune/1";

std::string kernel_word(const GemmTile& t) {
  return t.ws ? (t.pingpong ? "ws-pingpong" : "ws") : t.wgmma ? (t.pipelined ? "wgmma" : "wgmma-serial") : "mma";
}

int64_t int_field(const json::object& o, const char* key, const std::string& where) {
  const json::value* v = o.if_contains(key);
  MOEQ_CHECK(v != nullptr, where + ": missing \"" + key + "\"");
  MOEQ_CHECK(v->is_int64() || v->is_uint64(), where + ": \"" + key + "\" must be an integer, found " + json::serialize(*v));
  const int64_t n = v->is_int64() ? v->as_int64() : static_cast<int64_t>(v->as_uint64());
  MOEQ_CHECK(n >= 1 && n < (int64_t{1} << 40), where + ": \"" + key + "\" must be positive, found " + std::to_string(n));
  return n;
}

std::string string_field(const json::object& o, const char* key, const std::string& where) {
  const json::value* v = o.if_contains(key);
  MOEQ_CHECK(v != nullptr && v->is_string(), where + ": \"" + key + "\" must be a string");
  return std::string(v->as_string());
}

double number_field(const json::object& o, const char* key) {
  const json::value* v = o.if_contains(key);
  if (v == nullptr) return 0;
  if (v->is_double()) return v->as_double();
  if (v->is_int64()) return static_cast<double>(v->as_int64());
  return 0;
}

std::string fmt_us(double v) {
  std::ostringstream o;
  o.setf(std::ios::fixed);
  o.precision(1);
  o << v;
  return o.str();
}

}  // namespace

std::string tile_text(const GemmTile& t) {
  return kernel_word(t) + " " + std::to_string(t.bn) + " w" + std::to_string(t.warps_m) + "x" +
         std::to_string(t.warps_n) + " s" + std::to_string(t.stages);
}

GemmTile parse_tile_text(const std::string& text, const std::string& where) {
  std::istringstream in(text);
  std::string kind, warps, stages;
  GemmTile t;
  const std::string bad = where + ": a tile is \"KERNEL BN wMxN sS\" (KERNEL mma, wgmma, wgmma-serial, ws or ws-pingpong), found \"" +
                          text + "\"";
  MOEQ_CHECK(static_cast<bool>(in >> kind >> t.bn >> warps >> stages), bad);
  std::string rest;
  MOEQ_CHECK(!(in >> rest), bad);
  if (kind == "mma") {
  } else if (kind == "wgmma") {
    t.wgmma = true;
  } else if (kind == "wgmma-serial") {
    t.wgmma = true;
    t.pipelined = false;
  } else if (kind == "ws") {
    t.wgmma = t.ws = true;
  } else if (kind == "ws-pingpong") {
    t.wgmma = t.ws = t.pingpong = true;
  } else {
    fail(bad);
  }
  const size_t x = warps.find('x');
  MOEQ_CHECK(warps.size() >= 4 && warps[0] == 'w' && x != std::string::npos && stages.size() >= 2 && stages[0] == 's',
             bad);
  try {
    t.warps_m = std::stoi(warps.substr(1, x - 1));
    t.warps_n = std::stoi(warps.substr(x + 1));
    t.stages = std::stoi(stages.substr(1));
  } catch (const std::exception&) {
    fail(bad);
  }
  MOEQ_CHECK(t.bn >= 16 && t.bn <= 256 && t.bn % 16 == 0, where + ": tile width must be a multiple of 16 in [16, 256], found " +
                                                             std::to_string(t.bn));
  MOEQ_CHECK(t.warps_m >= 1 && t.warps_m <= 4 && t.warps_n >= 1 && t.warps_n <= 8,
             where + ": warp grid out of range in \"" + text + "\"");
  MOEQ_CHECK(t.stages >= 2 && t.stages <= 12, where + ": stages must be in [2, 12], found " + std::to_string(t.stages));
  return t;
}

std::vector<TunedEntry> parse_tune_table(const std::string& text, const std::string& origin) {
  json::value root;
  try {
    root = json::parse(text);
  } catch (const std::exception& e) {
    fail(origin + ": not JSON (" + e.what() + ")");
  }
  MOEQ_CHECK(root.is_object(), origin + ": a tune table is a JSON object");
  const json::object& top = root.as_object();
  const json::value* format = top.if_contains("format");
  MOEQ_CHECK(format != nullptr && format->is_string() && format->as_string() == kFormat,
             origin + ": \"format\" must be \"" + kFormat + "\"" +
                 (format ? ", found " + json::serialize(*format) : std::string(", found none")));
  const json::value* entries = top.if_contains("entries");
  MOEQ_CHECK(entries != nullptr && entries->is_array(), origin + ": \"entries\" must be an array");
  std::vector<TunedEntry> out;
  size_t i = 0;
  for (const json::value& v : entries->as_array()) {
    const std::string where = origin + ": entry " + std::to_string(i++);
    MOEQ_CHECK(v.is_object(), where + ": must be an object");
    const json::object& o = v.as_object();
    TunedEntry e;
    e.arch = string_field(o, "arch", where);
    MOEQ_CHECK(e.arch.rfind("sm_", 0) == 0, where + ": \"arch\" must look like sm_90, found \"" + e.arch + "\"");
    e.multiprocessors = static_cast<int>(int_field(o, "sms", where));
    if (o.if_contains("memory_gib") != nullptr) {
      const int64_t gib = int_field(o, "memory_gib", where);
      MOEQ_CHECK(gib <= 65536, where + ": \"memory_gib\" must be at most 65536, found " + std::to_string(gib));
      e.memory_gib = static_cast<int>(gib);
    }
    e.scheme = string_field(o, "scheme", where);
    e.experts = int_field(o, "experts", where);
    e.top_k = int_field(o, "top_k", where);
    e.hidden = int_field(o, "hidden", where);
    e.inter = int_field(o, "inter", where);
    e.m = int_field(o, "m", where);
    const int64_t bm = int_field(o, "bm", where);
    MOEQ_CHECK(bm == 16 || bm == 32 || bm == 64 || bm == 128, where + ": \"bm\" must be 16, 32, 64 or 128, found " +
                                                                  std::to_string(bm));
    e.bucket.bm = static_cast<int>(bm);
    e.bucket.gemm1 = parse_tile_text(string_field(o, "gemm1", where), where + " gemm1");
    e.bucket.gemm2 = parse_tile_text(string_field(o, "gemm2", where), where + " gemm2");
    for (const GemmTile* t : {&e.bucket.gemm1, &e.bucket.gemm2})
      MOEQ_CHECK(!t->wgmma || (bm >= 64 && t->warps_m == bm / 64),
                 where + ": wgmma tiles need bm of 64 or 128 and bm / 64 warpgroups");
    e.us = number_field(o, "us");
    e.heuristic_us = number_field(o, "heuristic_us");
    out.push_back(std::move(e));
  }
  return out;
}

std::string tune_table_json(const std::vector<TunedEntry>& entries) {
  std::string s = "{\"format\": \"" + std::string(kFormat) + "\", \"entries\": [\n";
  for (size_t i = 0; i < entries.size(); ++i) {
    const TunedEntry& e = entries[i];
    s += "  {\"arch\": \"" + e.arch + "\", \"sms\": " + std::to_string(e.multiprocessors) +
         (e.memory_gib > 0 ? ", \"memory_gib\": " + std::to_string(e.memory_gib) : std::string()) + ", \"scheme\": \"" +
         e.scheme + "\", \"experts\": " + std::to_string(e.experts) + ", \"top_k\": " + std::to_string(e.top_k) +
         ", \"hidden\": " + std::to_string(e.hidden) + ", \"inter\": " + std::to_string(e.inter) +
         ", \"m\": " + std::to_string(e.m) + ", \"bm\": " + std::to_string(e.bucket.bm) + ", \"gemm1\": \"" +
         tile_text(e.bucket.gemm1) + "\", \"gemm2\": \"" + tile_text(e.bucket.gemm2) + "\", \"us\": " + fmt_us(e.us) +
         ", \"heuristic_us\": " + fmt_us(e.heuristic_us) + "}" + (i + 1 < entries.size() ? "," : "") + "\n";
  }
  return s + "]}\n";
}

const std::vector<TunedEntry>& tune_entries() {
  // NOTE: read once; a malformed file fails every plan that consults it (the error names the
  // file) rather than being skipped, so a typo in the path or the table is never silent.
  static std::once_flag once;
  static std::vector<TunedEntry> entries;
  static std::string error;
  std::call_once(once, [] {
    try {
      if (const char* path = std::getenv("MOEQ_CT_TUNE_TABLE"); path != nullptr && *path != '\0') {
        std::ifstream f(path, std::ios::binary);
        MOEQ_CHECK(f.good(), std::string("MOEQ_CT_TUNE_TABLE: cannot read '") + path + "'");
        std::ostringstream text;
        text << f.rdbuf();
        entries = parse_tune_table(text.str(), std::string("MOEQ_CT_TUNE_TABLE '") + path + "'");
      }
      for (const EmbeddedTable& t : embedded_tune_tables()) {
        std::vector<TunedEntry> more = parse_tune_table(t.text, std::string("embedded tune table ") + t.name);
        entries.insert(entries.end(), more.begin(), more.end());
      }
    } catch (const std::exception& e) {
      entries.clear();
      error = e.what();
    }
  });
  MOEQ_CHECK(error.empty(), error);
  return entries;
}


int memory_gib(int64_t bytes) {
  return bytes <= 0 ? 0 : static_cast<int>((bytes + (int64_t{1} << 29)) >> 30);
}

bool tuned_bucket(const HeuristicInput& in, int64_t m, Bucket& out) {
  if (in.tuned == nullptr || m < 1) return false;
  const TunedEntry* best = nullptr;
  double best_distance = 0;
  int best_card = 0;
  // 0: measured on a card of this memory (within 5 %), 1: the entry records none, 2: another card's.
  auto card_rank = [&](const TunedEntry& e) {
    if (e.memory_gib == 0) return 1;
    return in.memory_gib > 0 && std::abs(e.memory_gib - in.memory_gib) * 20 <= in.memory_gib ? 0 : 2;
  };
  for (const TunedEntry& e : *in.tuned) {
    if (e.arch != in.arch || e.multiprocessors != in.multiprocessors || e.scheme != in.scheme_key ||
        e.experts != in.num_experts || e.top_k != in.top_k || e.hidden != in.hidden || e.inter != in.inter)
      continue;
    const double distance = std::fabs(std::log2(static_cast<double>(e.m)) - std::log2(static_cast<double>(m)));
    const int card = card_rank(e);
    // Nearest on a log scale; on a tie this card's entry (TunedEntry::memory_gib), then the
    // smaller M (its tiles hold fewer rows); for the same M and card the first entry
    // (MOEQ_CT_TUNE_TABLE's before the embedded ones).
    const bool tie = best != nullptr && std::fabs(distance - best_distance) <= 1e-9;
    if (best == nullptr || distance < best_distance - 1e-9 || (tie && card < best_card) ||
        (tie && card == best_card && e.m < best->m)) {
      best = &e;
      best_distance = distance;
      best_card = card;
    }
  }
  if (best == nullptr) return false;
  for (const bool gated : {true, false}) {
    const std::string why = tile_refusal(in, best->bucket.bm, gated ? best->bucket.gemm1 : best->bucket.gemm2, gated);
    MOEQ_CHECK(why.empty(), "tune table entry (" + best->arch + ", " + best->scheme + ", E=" + std::to_string(best->experts) +
                                " top_k=" + std::to_string(best->top_k) + " H=" + std::to_string(best->hidden) +
                                " I=" + std::to_string(best->inter) + ", M=" + std::to_string(best->m) +
                                ") cannot run here: " + why);
  }
  out = best->bucket;
  out.max_tokens = m;
  return true;
}

}  // namespace moeq::ct::gpu
