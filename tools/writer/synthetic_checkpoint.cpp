#include <moeq/dtype.hpp>
#include <moeq/error.hpp>
#include <moeq_writer/safetensors_writer.hpp>
#include <moeq_writer/synthetic.hpp>
#include <moeq_writer/writer_util.hpp>

#include <boost/json.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>
#include <utility>

namespace moeq::writer {
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

enum class Fill { kFp8, kInt8, kBf16, kScale, kOnes };

struct Planned {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  Fill fill;
  uint64_t bytes = 0;
  uint64_t begin = 0;  // in the data section
  uint64_t seed = 0;
};

struct Shard {
  std::string file;
  std::vector<Planned> tensors;
  std::string header;  // 8-byte length + JSON, padded
  uint64_t data_bytes = 0;
};

uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t numel_of(const std::vector<int64_t>& shape) {
  uint64_t n = 1;
  for (int64_t s : shape) n *= static_cast<uint64_t>(s);
  return n;
}

// Bytes [offset, offset + n) of tensor t: element i depends only on (t.seed, i), so pieces
// written by different threads agree with one sequential pass.
void generate(const Planned& t, uint64_t offset, uint64_t n, std::byte* out) {
  auto* o = reinterpret_cast<uint8_t*>(out);
  switch (t.fill) {
    case Fill::kFp8:
    case Fill::kInt8: {
      // fp8: bit 6 cleared keeps the exponent below 8, so |code| <= 1.875 and never NaN.
      const uint8_t mask = t.fill == Fill::kFp8 ? 0xbf : 0xff;
      uint64_t word = ~uint64_t{0}, h = 0;
      for (uint64_t i = 0; i < n; ++i) {
        const uint64_t e = offset + i;
        if (e / 8 != word) {
          word = e / 8;
          h = mix64(t.seed ^ (word * 0x100000001b3ull));
        }
        o[i] = static_cast<uint8_t>(h >> (8 * (e % 8))) & mask;
      }
      return;
    }
    case Fill::kBf16:
    case Fill::kScale:
    case Fill::kOnes: {
      // Two bytes per element; offset and n are even (pieces split at element boundaries).
      for (uint64_t i = 0; i < n; i += 2) {
        const uint64_t e = (offset + i) / 2;
        float v = 1.0f;
        if (t.fill != Fill::kOnes) {
          const uint64_t h = mix64(t.seed ^ (e * 0x100000001b3ull));
          const float u = static_cast<float>(static_cast<int64_t>(h >> 40) - 8388608) * (1.0f / 8388608.0f);
          v = t.fill == Fill::kBf16 ? 0.05f * u : 0.04f + 0.02f * u;  // scales in [0.02, 0.06)
        }
        const uint16_t b = float_to_bf16(v);
        o[i] = static_cast<uint8_t>(b & 0xff);
        o[i + 1] = static_cast<uint8_t>(b >> 8);
      }
      return;
    }
  }
}

std::string layer_file(int l, int n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05d-of-%05d.safetensors", l + 1, n);
  return buf;
}

void finish_header(Shard& s) {
  std::vector<HeaderTensor> header;
  uint64_t offset = 0;
  for (Planned& t : s.tensors) {
    t.begin = offset;
    offset += t.bytes;
    header.push_back({t.name, t.dtype, t.shape, t.bytes});
  }
  s.data_bytes = offset;
  s.header = safetensors_prefix(header, {{"format", "pt"}});
}

void pwrite_all(int fd, const void* data, size_t n, uint64_t at, const fs::path& path) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(at));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) fail("synthetic checkpoint: cannot write '" + path.string() + "': " + std::strerror(errno));
    p += w;
    n -= static_cast<size_t>(w);
    at += static_cast<uint64_t>(w);
  }
}

}  // namespace

std::optional<SyntheticSpec> synthetic_shape(const std::string& name) {
  SyntheticSpec s;
  auto set = [&](int64_t e, int64_t h, int64_t i, int k) {
    s.num_experts = e, s.hidden = h, s.intermediate = i, s.top_k = k;
    return s;
  };
  if (name == "Qwen3-30B-A3B") return set(128, 2048, 768, 8);
  if (name == "Mixtral-8x7B") return set(8, 4096, 14336, 2);
  if (name == "DeepSeek-V3") return set(256, 7168, 2048, 8);
  if (name == "Granite-3B-A800M") return set(40, 1536, 512, 8);
  return std::nullopt;
}

std::optional<WeightScheme> synthetic_scheme(const std::string& name) {
  if (name == "fp8-channel") return WeightScheme::kFp8Channel;
  if (name == "fp8-block") return WeightScheme::kFp8Block;
  if (name == "int8") return WeightScheme::kInt8Channel;
  if (name == "bf16") return WeightScheme::kUnquantized;
  return std::nullopt;
}

SyntheticResult write_synthetic_checkpoint(const fs::path& dir, const SyntheticSpec& spec) {
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t E = spec.num_experts, H = spec.hidden, I = spec.intermediate, V = 64;
  if (E < 1 || H < 1 || I < 1 || spec.num_layers < 1 || spec.top_k < 1 || spec.top_k > E)
    fail("synthetic checkpoint: experts, hidden, intermediate and layers must be positive and top_k in [1, experts]; "
         "found E=" + std::to_string(E) + " H=" + std::to_string(H) + " I=" + std::to_string(I) +
         " layers=" + std::to_string(spec.num_layers) + " top_k=" + std::to_string(spec.top_k));
  if (fs::exists(dir)) fail("synthetic checkpoint: " + dir.string() + " already exists");
  const WeightScheme ws = spec.weights;
  const bool quantized = ws != WeightScheme::kUnquantized;
  const DType wdt = ws == WeightScheme::kUnquantized ? DType::BF16
                    : ws == WeightScheme::kInt8Channel ? DType::I8
                                                       : DType::F8_E4M3;
  const Fill wfill = wdt == DType::BF16 ? Fill::kBf16 : wdt == DType::I8 ? Fill::kInt8 : Fill::kFp8;

  std::vector<Shard> shards(static_cast<size_t>(spec.num_layers));
  uint64_t next_seed = spec.seed * 0x9e3779b97f4a7c15ull + 1;
  auto add = [&](Shard& s, std::string name, DType dt, std::vector<int64_t> shape, Fill fill) {
    const uint64_t bytes = numel_of(shape) * dtype_size(dt);
    s.tensors.push_back({std::move(name), dt, std::move(shape), fill, bytes, 0, mix64(next_seed++)});
  };
  // A weight [rows, cols] with the scheme's scale (channel [rows, 1], block 128 x 128).
  auto add_weight = [&](Shard& s, const std::string& base, int64_t rows, int64_t cols, bool expert) {
    add(s, base + ".weight", wdt, {rows, cols}, wfill);
    if (!quantized) return;
    if (expert && ws == WeightScheme::kFp8Block)
      add(s, base + ".weight_scale", DType::BF16, {(rows + 127) / 128, (cols + 127) / 128}, Fill::kScale);
    else
      add(s, base + ".weight_scale", DType::BF16, {rows, 1}, Fill::kScale);
  };
  for (int l = 0; l < spec.num_layers; ++l) {
    Shard& s = shards[static_cast<size_t>(l)];
    s.file = layer_file(l, spec.num_layers);
    const std::string lp = "model.layers." + std::to_string(l);
    // Attention is FP8 channel in the quantized checkpoints, as write_moe_checkpoint writes it.
    if (quantized) {
      add(s, lp + ".self_attn.q_proj.weight", DType::F8_E4M3, {H, H}, Fill::kFp8);
      add(s, lp + ".self_attn.q_proj.weight_scale", DType::BF16, {H, 1}, Fill::kScale);
    } else {
      add(s, lp + ".self_attn.q_proj.weight", DType::BF16, {H, H}, Fill::kBf16);
    }
    add(s, lp + ".input_layernorm.weight", DType::BF16, {H}, Fill::kOnes);
    add(s, lp + ".mlp.gate.weight", DType::BF16, {E, H}, Fill::kBf16);
    for (int64_t e = 0; e < E; ++e) {
      const std::string ep = lp + ".mlp.experts." + std::to_string(e);
      add_weight(s, ep + ".gate_proj", I, H, true);
      add_weight(s, ep + ".up_proj", I, H, true);
      add_weight(s, ep + ".down_proj", H, I, true);
    }
  }
  Shard& last = shards.back();
  add(last, "model.embed_tokens.weight", DType::BF16, {V, H}, Fill::kBf16);
  add(last, "lm_head.weight", DType::BF16, {V, H}, Fill::kBf16);
  add(last, "model.norm.weight", DType::BF16, {H}, Fill::kOnes);

  SyntheticResult result;
  json::object weight_map;
  for (Shard& s : shards) {
    std::sort(s.tensors.begin(), s.tensors.end(), [](const Planned& a, const Planned& b) { return a.name < b.name; });
    finish_header(s);
    for (const Planned& t : s.tensors) weight_map[t.name] = s.file;
    result.tensors += static_cast<int64_t>(s.tensors.size());
    result.bytes += s.data_bytes;
  }
  result.files = static_cast<int>(shards.size());

  fs::path tmp = dir;
  tmp += ".partial-" + std::to_string(::getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  try {
    MoeSpec ms;
    ms.layout = Layout::kPerExpert;
    ms.num_layers = spec.num_layers;
    ms.num_experts = E;
    ms.hidden = H;
    ms.intermediate = I;
    ms.top_k = spec.top_k;
    QuantSpec q;
    q.weights = ws;
    if (!quantized) q.config = ConfigKind::kNone;
    write_text_file(tmp / "config.json", model_config_json(ms, q, {"lm_head", "re:.*mlp.gate$"}));
    write_text_file(tmp / "model.safetensors.index.json",
                    json::serialize(json::object{{"metadata", json::object{{"total_size", result.bytes}}},
                                                 {"weight_map", std::move(weight_map)}}));

    // Work items of at most 8 MiB, split at even byte offsets (bf16 elements stay whole).
    struct Item {
      size_t shard, tensor;
      uint64_t offset, bytes;
    };
    constexpr uint64_t kPiece = uint64_t{8} << 20;
    std::vector<Item> items;
    std::vector<int> fds(shards.size(), -1);
    struct CloseAll {
      std::vector<int>& fds;
      ~CloseAll() {
        for (int fd : fds)
          if (fd >= 0) ::close(fd);
      }
    } close_all{fds};
    for (size_t si = 0; si < shards.size(); ++si) {
      const fs::path path = tmp / shards[si].file;
      fds[si] = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fds[si] < 0) fail("synthetic checkpoint: cannot create '" + path.string() + "': " + std::strerror(errno));
      pwrite_all(fds[si], shards[si].header.data(), shards[si].header.size(), 0, path);
      for (size_t ti = 0; ti < shards[si].tensors.size(); ++ti)
        for (uint64_t o = 0; o < shards[si].tensors[ti].bytes; o += kPiece)
          items.push_back({si, ti, o, std::min(kPiece, shards[si].tensors[ti].bytes - o)});
    }
    std::mutex error_mutex;
    std::string error;
    std::atomic<size_t> next{0};
    auto worker = [&] {
      std::vector<std::byte> buf(kPiece);
      for (size_t k = next.fetch_add(1); k < items.size(); k = next.fetch_add(1)) {
        const Item& it = items[k];
        const Shard& s = shards[it.shard];
        const Planned& t = s.tensors[it.tensor];
        try {
          generate(t, it.offset, it.bytes, buf.data());
          pwrite_all(fds[it.shard], buf.data(), it.bytes, s.header.size() + t.begin + it.offset, tmp / s.file);
        } catch (const std::exception& e) {
          std::lock_guard<std::mutex> lock(error_mutex);
          if (error.empty()) error = e.what();
          next.store(items.size());
        }
      }
    };
    const unsigned threads = spec.threads ? spec.threads : std::max(1u, std::thread::hardware_concurrency());
    std::vector<std::thread> pool;
    for (unsigned i = 1; i < threads; ++i) pool.emplace_back(worker);
    worker();
    for (auto& t : pool) t.join();
    for (size_t si = 0; si < fds.size(); ++si)
      if (::close(std::exchange(fds[si], -1)) != 0 && error.empty())
        error = "synthetic checkpoint: cannot close '" + (tmp / shards[si].file).string() + "': " + std::strerror(errno);
    if (!error.empty()) fail(error);
    fs::rename(tmp, dir);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return result;
}

}  // namespace moeq::writer
