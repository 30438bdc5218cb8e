// A small, correct SDK-built plugin for the writer's compressed-tensors FP8 channel fixtures
// (FP8_DYNAMIC: channel weight scales, dynamic per-token activations), built once as is and once
// per defect (CONFORM_DEFECT_*), so that tests/test_conform.cpp can show that `moeq conform`
// fails exactly the check each defect breaks, with a clear reason.
//
//   (none)          conform_good: passes every check; throws moeq::Error inside weight_loader on
//                   every bad input, which the SDK trampolines turn into statuses (check 6)
//   CRASH_PROBE     segfaults in probe on a config that is not compressed-tensors (check 3)
//   HANG_PROBE      never returns from probe on such a config (check 3, by timeout)
//   RAW_THROW       a hand-written weight_loader slot without the SDK trampoline: the
//                   exception of a bad input escapes the ABI (check 6)
//   WRONG_MAJOR     descriptor of ABI major 2 (check 2)
//   MISSING_SLOT    process_after_loading left NULL (check 1)
//   LEAK_STATUS     create_weights makes a status and drops it (check 10)
//   WRITE_OUTSIDE   copies up_proj one row past its place, outside w13_weight (check 5)
//   LIES_SHAPE      declares w2_weight with the full intermediate size whatever the TP (check 4)
//   OOB_OUT         apply writes one element past the end of `out` (checks 7-9, by the canaries)
//   OOB_FAR         apply writes 1024 elements past the end of `out`, beyond the canaries: into
//                   the guard page, which ends the check (checks 7-10, named by the fault handler)
//   SWAP_SCALES     the loader puts gate's channel scales on the up rows and up's on the gate
//                   rows; its dequantize_expert agrees with its apply (check 7, against the
//                   writer's masters, the built-in plugin's dequantization or --reference)
//   FORK_INIT       forks in initialize a process that never exits (pid appended to the file
//                   $MOEQ_CONFORM_TEST_PIDFILE when set); every check that initializes fails
//   UNWRITTEN_SCALE consumes up_proj's weight_scale without copying it (check 5: the plugin,
//                   not the checkpoint, left w13_weight_scale unwritten)
//   LEGACY_MINOR1   not a defect: built as an ABI 1.1 plugin (descriptor minor 1, a table that
//                   ends at dequantize_expert, no apply_info), which a 1.2 host still loads and
//                   runs, lending it no workspace
#include <moeq/sdk/kernels.hpp>
#include <moeq/sdk/sdk.hpp>

#include <boost/json.hpp>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <vector>

#ifndef CONFORM_PLUGIN_NAME
#define CONFORM_PLUGIN_NAME "conform_good"
#endif

namespace conform_plugin {
namespace json = boost::json;
using moeq::DType;
using moeq::fail;

// Is this a compressed-tensors FP8 channel / dynamic per-token group? Returns the reason if not.
std::string scheme_problem(const char* config, const char* dtype) {
  json::value v;
  try {
    v = json::parse(config ? config : "");
  } catch (const std::exception&) {
    return "the quantization config is not valid JSON";
  }
  const json::object* o = v.if_object();
  const json::value* method = o ? o->if_contains("quant_method") : nullptr;
  const bool ct = method && method->is_string() && method->as_string() == "compressed-tensors";
#if defined(CONFORM_DEFECT_CRASH_PROBE)
  if (!ct) {
    // The defect: assumes every config is compressed-tensors and writes through a wild
    // pointer. Not a null one: a UBSan build would stop at the null check with exit status 1,
    // where a third party's uninstrumented plugin dies by SIGSEGV (what check 3 must report).
    volatile std::uintptr_t wild = 64;  // volatile: the compiler may not prove it out of bounds
    volatile int* nowhere = reinterpret_cast<volatile int*>(wild);
    *nowhere = 1;
  }
#elif defined(CONFORM_DEFECT_HANG_PROBE)
  if (!ct)
    for (;;) ::pause();  // the defect: waits for something that never comes
#endif
  if (!ct) return "not a compressed-tensors config";
  if (std::string(dtype ? dtype : "") != "F8_E4M3") return "expert weights are not F8_E4M3";
  const json::object* groups = o->if_contains("config_groups") ? o->at("config_groups").if_object() : nullptr;
  if (groups == nullptr) return "no config_groups";
  for (const auto& g : *groups) {
    const json::object* group = g.value().if_object();
    if (!group) continue;
    const json::object* w = group->if_contains("weights") ? group->at("weights").if_object() : nullptr;
    const json::object* a =
        group->if_contains("input_activations") ? group->at("input_activations").if_object() : nullptr;
    if (!w || !a) continue;
    auto is = [](const json::object* x, const char* k, const char* want) {
      const json::value* f = x->if_contains(k);
      return f && f->is_string() && f->as_string() == want;
    };
    if (is(w, "strategy", "channel") && is(w, "type", "float") && is(a, "strategy", "token") && is(a, "type", "float"))
      return {};
  }
  return "no config group with FP8 channel weights and dynamic per-token activations";
}

float fp8_per_token_scale(const float* row, int64_t n) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(row[i]));
  return std::max(amax / moeq::kFp8E4M3Max, 1.0f / (moeq::kFp8E4M3Max * 512.0f));
}

// In place: each value becomes fp8(x / s) * s with the row's per-token scale.
void fake_quant_row(float* row, int64_t n) {
  const float s = fp8_per_token_scale(row, n);
  for (int64_t i = 0; i < n; ++i) {
    const float q = std::clamp(row[i] / s, -moeq::kFp8E4M3Max, moeq::kFp8E4M3Max);
    row[i] = moeq::fp8_e4m3_to_float(moeq::float_to_fp8_e4m3(q)) * s;
  }
}

class Method final : public moeq::sdk::Method {
 public:
  explicit Method(const moeq_layer_geometry& g) : g_(g) {
    if (g_.tp_size < 1 || g_.tp_rank < 0 || g_.tp_rank >= g_.tp_size) fail("tp rank out of range");
    if (g_.intermediate_size_per_partition * g_.tp_size != g_.intermediate_size)
      fail("intermediate size does not split into the TP shards");
  }

  void create_weights(const moeq::sdk::Layer& layer) override {
    const int64_t E = g_.num_local_experts, H = g_.hidden_size, It = g_.intermediate_size_per_partition;
#ifdef CONFORM_DEFECT_LIES_SHAPE
    const int64_t w2_cols = g_.intermediate_size;  // the defect: ignores the TP shard
#else
    const int64_t w2_cols = It;
#endif
    w13_ = layer.create_param("w13_weight", {E, 2 * It, H}, DType::F8_E4M3);
    w2_ = layer.create_param("w2_weight", {E, H, w2_cols}, DType::F8_E4M3);
    s13_ = layer.create_param("w13_weight_scale", {E, 2 * It, 1}, DType::F32);
    s2_ = layer.create_param("w2_weight_scale", {E, H, 1}, DType::F32);
#ifdef CONFORM_DEFECT_LEAK_STATUS
    moeq::sdk::host()->status_create(MOEQ_STATUS_CODE_INTERNAL, "a note nobody frees");  // the defect
#endif
  }

  bool load(const moeq_weight_loader_args& a, const moeq::sdk::Layer& layer, std::string& skip) override {
    const std::string suffix = a.suffix ? a.suffix : "", name = a.tensor_name ? a.tensor_name : "";
    const int32_t p = a.projection;
    if (p != MOEQ_PROJECTION_W1 && p != MOEQ_PROJECTION_W2 && p != MOEQ_PROJECTION_W3)
      fail(name + ": unknown projection " + std::to_string(p));
    if (a.local_expert < 0 || a.local_expert >= g_.num_local_experts)
      fail(name + ": local expert " + std::to_string(a.local_expert) + " is not on this rank");
    if (suffix == "input_scale") {
      skip = "activations are quantized per token at run time; a static input_scale is not used";
      return false;
    }
    const moeq::sdk::View src(*a.source);
    const int64_t H = g_.hidden_size, I = g_.intermediate_size, It = g_.intermediate_size_per_partition;
    const int64_t r = g_.tp_rank, e = a.local_expert;
    const bool w2 = p == MOEQ_PROJECTION_W2;
#ifdef CONFORM_DEFECT_WRITE_OUTSIDE
    const int64_t up_row = It + 1;  // the defect: one row too far, past the end of w13_weight
#else
    const int64_t up_row = It;
#endif
    if (suffix == "weight") {
      const std::vector<int64_t> want = w2 ? std::vector<int64_t>{H, I} : std::vector<int64_t>{I, H};
      if (src.dtype() != DType::F8_E4M3 || src.shape() != want)
        fail(name + ": expected F8_E4M3 " + moeq::sdk::shape_string(want) + ", found " + moeq::dtype_name(src.dtype()) +
             " " + moeq::sdk::shape_string(src.shape()));
      if (w2)
        layer.copy(w2_, {e, 0, 0}, src.narrow(1, r * It, It));
      else
        layer.copy(w13_, {e, p == MOEQ_PROJECTION_W1 ? 0 : up_row, 0}, src.narrow(0, r * It, It));
      return true;
    }
    if (suffix == "weight_scale" || suffix == "weight_scale_inv") {
#ifdef CONFORM_DEFECT_UNWRITTEN_SCALE
      if (p == MOEQ_PROJECTION_W3) return true;  // the defect: taken, never copied
#endif
#ifdef CONFORM_DEFECT_SWAP_SCALES
      const int64_t scale_row = p == MOEQ_PROJECTION_W1 ? It : 0;  // the defect: gate and up swapped
#else
      const int64_t scale_row = p == MOEQ_PROJECTION_W1 ? 0 : It;
#endif
      const int64_t n = w2 ? H : I;
      moeq::sdk::View s = src;
      if (s.ndim() == 1 && s.size(0) == n) s = s.reshaped({n, 1});
      if (s.ndim() != 2 || s.size(0) != n || s.size(1) != 1 || !moeq::is_float(s.dtype()) || s.dtype() == DType::F8_E4M3)
        fail(name + ": expected a float channel scale [" + std::to_string(n) + ", 1], found " +
             moeq::dtype_name(src.dtype()) + " " + moeq::sdk::shape_string(src.shape()));
      if (w2)
        layer.copy(s2_, {e, 0, 0}, s, MOEQ_COPY_CHECK_SCALE);
      else
        layer.copy(s13_, {e, scale_row, 0}, s.narrow(0, r * It, It), MOEQ_COPY_CHECK_SCALE);
      return true;
    }
    fail(name + ": unexpected tensor '" + suffix + "' (expected weight, weight_scale or input_scale)");
  }

  void process_after_loading(const moeq::sdk::Layer&) override {
    const int64_t E = g_.num_local_experts, H = g_.hidden_size, It = g_.intermediate_size_per_partition;
    const auto* c13 = static_cast<const uint8_t*>(w13_->data);
    const auto* c2 = static_cast<const uint8_t*>(w2_->data);
    const auto* s13 = static_cast<const float*>(s13_->data);
    const auto* s2 = static_cast<const float*>(s2_->data);
    w13f_.resize(static_cast<size_t>(E * 2 * It * H));
    w2f_.resize(static_cast<size_t>(E * H * It));
    for (int64_t row = 0; row < E * 2 * It; ++row)
      for (int64_t c = 0; c < H; ++c) w13f_[row * H + c] = moeq::fp8_e4m3_to_float(c13[row * H + c]) * s13[row];
    const int64_t w2_cols = w2_->shape[2];
    for (int64_t row = 0; row < E * H; ++row)
      for (int64_t c = 0; c < It; ++c) w2f_[row * It + c] = moeq::fp8_e4m3_to_float(c2[row * w2_cols + c]) * s2[row];
    ready_ = true;
  }

  void apply(const moeq_apply_args& a) override {
    if (!ready_) fail(MOEQ_STATUS_CODE_FAILED_PRECONDITION, "apply before process_after_loading");
    const int64_t H = g_.hidden_size, It = g_.intermediate_size_per_partition;
    auto check = [](const DLTensor* t, const char* what, DLDataTypeCode code, int bits, int64_t rows, int64_t cols) {
      if (t == nullptr || t->ndim != 2 || t->dtype.code != code || t->dtype.bits != bits || t->dtype.lanes != 1 ||
          t->shape[0] != rows || t->shape[1] != cols)
        fail(std::string("apply: ") + what + " must be " + (code == kDLFloat ? "float" : "int") + std::to_string(bits) +
             " [" + std::to_string(rows) + ", " + std::to_string(cols) + "]");
    };
    if (a.x == nullptr || a.x->ndim != 2) fail("apply: x must be [M, H]");
    const int64_t M = a.x->shape[0];
    const int64_t k = a.topk_ids && a.topk_ids->ndim == 2 ? a.topk_ids->shape[1] : 0;
    check(a.x, "x", kDLFloat, 32, M, H);
    check(a.out, "out", kDLFloat, 32, M, H);
    check(a.topk_ids, "topk_ids", kDLInt, 32, M, k);
    check(a.topk_weights, "topk_weights", kDLFloat, 32, M, k);
    auto row_of = [](const DLTensor* t, int64_t m) {
      return reinterpret_cast<float*>(static_cast<char*>(t->data) + t->byte_offset) + m * t->strides[0];
    };
    const auto* ids = static_cast<const int32_t*>(a.topk_ids->data);
    const auto* wts = static_cast<const float*>(a.topk_weights->data);
    std::vector<float> xq(static_cast<size_t>(H)), h(static_cast<size_t>(2 * It)), act(static_cast<size_t>(It));
    for (int64_t m = 0; m < M; ++m) {
      const float* x = row_of(a.x, m);
      for (int64_t c = 0; c < H; ++c) xq[c] = x[c * a.x->strides[1]];
      fake_quant_row(xq.data(), H);
      float* out = row_of(a.out, m);
      std::vector<double> acc(static_cast<size_t>(H), 0.0);
      for (int64_t j = 0; j < k; ++j) {
        const int64_t e = static_cast<int64_t>(ids[m * k + j]) - g_.first_local_expert;
        if (e < 0 || e >= g_.num_local_experts) continue;
        for (int64_t r = 0; r < 2 * It; ++r) {
          double s = 0;
          const float* w = w13f_.data() + (e * 2 * It + r) * H;
          for (int64_t c = 0; c < H; ++c) s += double(w[c]) * xq[c];
          h[r] = static_cast<float>(s);
        }
        for (int64_t i = 0; i < It; ++i) act[i] = h[i] / (1.0f + std::exp(-h[i])) * h[It + i];
        fake_quant_row(act.data(), It);
        for (int64_t r = 0; r < H; ++r) {
          double s = 0;
          const float* w = w2f_.data() + (e * H + r) * It;
          for (int64_t c = 0; c < It; ++c) s += double(w[c]) * act[c];
          acc[r] += double(wts[m * k + j]) * s;
        }
      }
      for (int64_t c = 0; c < H; ++c) out[c * a.out->strides[1]] = static_cast<float>(acc[c]);
    }
#ifdef CONFORM_DEFECT_OOB_OUT
    if (M > 0) row_of(a.out, M - 1)[H * a.out->strides[1]] = 0.0f;  // the defect: one element past the end
#elif defined(CONFORM_DEFECT_OOB_FAR)
    if (M > 0) static_cast<volatile float*>(row_of(a.out, M - 1))[(H + 1023) * a.out->strides[1]] = 0.0f;  // the defect
#endif
  }

  std::string describe() const override {
    json::object kernels;
    for (const moeq::sdk::EmbeddedKernel& kernel : moeq::sdk::embedded_kernels())
      kernels[kernel.name] = json::string(kernel.source, kernel.size);
    return json::serialize(json::object{{"scheme", "fp8 channel w8a8 (conform test plugin)"},
                                        {"rel_l2_tolerance", 0.02},
                                        {"kernels", kernels}});
  }

  void dequantize_expert(moeq_dequantize_expert_args& a) const override {
    if (!ready_) fail(MOEQ_STATUS_CODE_FAILED_PRECONDITION, "dequantize_expert before process_after_loading");
    if (a.local_expert < 0 || a.local_expert >= g_.num_local_experts) fail("dequantize_expert: no such local expert");
    const int64_t H = g_.hidden_size, It = g_.intermediate_size_per_partition, e = a.local_expert;
    std::copy_n(w13f_.begin() + e * 2 * It * H, 2 * It * H, a.w13);
    std::copy_n(w2f_.begin() + e * H * It, H * It, a.w2);
    a.a1_quant = MOEQ_ACT_QUANT_FP8_PER_TOKEN;
    a.a2_quant = MOEQ_ACT_QUANT_FP8_PER_TOKEN;
  }

 private:
  moeq_layer_geometry g_;
  const DLTensor* w13_ = nullptr;
  const DLTensor* w2_ = nullptr;
  const DLTensor* s13_ = nullptr;
  const DLTensor* s2_ = nullptr;
  std::vector<float> w13f_, w2f_;
  bool ready_ = false;
};

struct Plugin {
  static int32_t probe(const moeq_probe_args& a, std::string& reason) {
    reason = scheme_problem(a.quant_config_json, a.weight_dtype);
    if (!reason.empty()) return 0;
    reason = "compressed-tensors fp8 channel weights, dynamic per-token activations";
    return 10;
  }
  static std::unique_ptr<moeq::sdk::Method> create(const moeq_method_create_args& a) {
    if (a.geometry == nullptr) fail("method_create: NULL geometry");
    if (std::string why = scheme_problem(a.quant_config_json, a.weight_dtype); !why.empty()) fail(why);
    return std::make_unique<Method>(*a.geometry);
  }
};

#ifdef CONFORM_DEFECT_RAW_THROW
// The defect: a hand-written slot that checks the source's rank before handing over to the SDK
// trampoline, outside its guard, so a bad tensor leaves the plugin as a C++ exception.
moeq_status* raw_weight_loader(moeq_weight_loader_args* a) {
  if (a->source != nullptr && a->source->ndim != 2 && std::string(a->suffix ? a->suffix : "") == "weight")
    throw std::invalid_argument("weight must be 2-D, found rank " + std::to_string(a->source->ndim));
  return moeq::sdk::weight_loader_trampoline(a);
}
#endif

#ifdef CONFORM_DEFECT_FORK_INIT
// The defect: a helper process started at initialize that outlives every call and holds the
// descriptors it inherited (a check's report pipe among them).
moeq_status* forking_initialize(moeq_initialize_args* a) {
  const pid_t helper = ::fork();
  if (helper == 0)
    for (;;) ::pause();
  if (const char* file = std::getenv("MOEQ_CONFORM_TEST_PIDFILE"); file != nullptr && helper > 0)
    if (FILE* f = std::fopen(file, "a")) {
      std::fprintf(f, "%d\n", static_cast<int>(helper));
      std::fclose(f);
    }
  return moeq::sdk::PluginApi<Plugin>::table()->initialize(a);
}
#endif

const moeq_plugin_api* table() {
  static const moeq_plugin_api api = [] {
    moeq_plugin_api t = *moeq::sdk::PluginApi<Plugin>::table();
#ifdef CONFORM_DEFECT_FORK_INIT
    t.initialize = &forking_initialize;
#endif
#ifdef CONFORM_DEFECT_RAW_THROW
    t.weight_loader = &raw_weight_loader;
#endif
#ifdef CONFORM_DEFECT_MISSING_SLOT
    t.process_after_loading = nullptr;
#endif
#ifdef CONFORM_DEFECT_LEGACY_MINOR1
    t.struct_size = MOEQ_STRUCT_SIZE(moeq_plugin_api, dequantize_expert);
    t.apply_info = nullptr;  // not part of a 1.1 table (the host never reads past struct_size)
#endif
    return t;
  }();
  return &api;
}

const char* const kSchemes[] = {"compressed-tensors fp8 channel w8a8, dynamic per-token activations (test plugin)"};

const moeq_plugin_descriptor* descriptor() {
  static const moeq_plugin_descriptor d = {
      sizeof(moeq_plugin_descriptor),
#ifdef CONFORM_DEFECT_WRONG_MAJOR
      MOEQ_ABI_MAJOR + 1,
#else
      MOEQ_ABI_MAJOR,
#endif
#ifdef CONFORM_DEFECT_LEGACY_MINOR1
      1,
#else
      MOEQ_ABI_MINOR,
#endif
      0,
      0,
      CONFORM_PLUGIN_NAME,
      "1.0.0",
      kSchemes,
      1,
      nullptr,
      0,
      MOEQ_CAP_CPU_APPLY,
      "tests/conform_plugins",
      table(),
  };
  return &d;
}

}  // namespace conform_plugin

MOEQ_SDK_EXPORT_DESCRIPTOR(conform_plugin::descriptor())
