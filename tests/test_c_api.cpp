// The C API (moeq/moeq.h) against the C++ library it wraps: every failure is a status code and
// a message on the calling thread (never an exception or an abort), layer_info/route/apply/
// dequantize give what LoadedModel gives, the registry may go before its models, and on a GPU
// an apply on device memory can be captured in a CUDA graph.
#include "ct_support.hpp"
#include "support.hpp"

#include <moeq/cuda_driver.hpp>
#include <moeq/load_report.hpp>
#include <moeq/moeq.h>
#include <moeq/routed_forward.hpp>
#include <moeq/staged_upload.hpp>
#include <moeq_writer/producers.hpp>

#include <boost/json.hpp>

#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <thread>

using namespace moeq;
using namespace moeq::test;
namespace json = boost::json;

namespace {

// A host tensor the test owns, as a DLTensor over its bytes (compact row-major).
struct HostTensor {
  DType dtype;
  std::vector<int64_t> shape, strides;
  std::vector<std::byte> bytes;
  DLTensor t{};
  HostTensor(DType d, std::vector<int64_t> s) : dtype(d), shape(std::move(s)) {
    int64_t n = 1;
    strides.resize(shape.size());
    for (size_t i = shape.size(); i-- > 0;) {
      strides[i] = n;
      n *= shape[i];
    }
    bytes.assign(static_cast<size_t>(n) * dtype_size(d), std::byte{0});
    t = {bytes.data(), {kDLCPU, 0}, static_cast<int32_t>(shape.size()), to_dl(d), shape.data(), strides.data(), 0};
  }
  size_t numel() const { return bytes.size() / dtype_size(dtype); }
  float get(size_t i) const { return load_as_float(bytes.data(), dtype, i); }
  void set(size_t i, float v) { store_from_float(bytes.data(), dtype, i, v); }
  std::vector<float> floats() const {
    std::vector<float> v(numel());
    for (size_t i = 0; i < v.size(); ++i) v[i] = get(i);
    return v;
  }
  static HostTensor of(DType d, std::vector<int64_t> s, const std::vector<float>& values) {
    HostTensor h(d, std::move(s));
    REQUIRE(values.size() == h.numel());
    for (size_t i = 0; i < values.size(); ++i) h.set(i, values[i]);
    return h;
  }
};

// The registry over this build's plugins, through the C API.
struct CRegistry {
  moeq_registry* r = nullptr;
  CRegistry() { REQUIRE(moeq_registry_open(MOEQ_TEST_PLUGIN_DIR, MOEQ_REGISTRY_NO_DEFAULT_PATH, &r) == MOEQ_STATUS_CODE_OK); }
  ~CRegistry() { moeq_registry_free(r); }
  CRegistry(const CRegistry&) = delete;
  CRegistry& operator=(const CRegistry&) = delete;
};

struct CModel {
  moeq_model* m = nullptr;
  CModel(moeq_registry* r, const std::filesystem::path& dir, const moeq_load_options* o = nullptr) {
    const moeq_status_code c = moeq_model_load(r, dir.c_str(), o, &m);
    REQUIRE_MESSAGE(c == MOEQ_STATUS_CODE_OK, moeq_last_error_message());
  }
  ~CModel() { moeq_model_free(m); }
  CModel(const CModel&) = delete;
  CModel& operator=(const CModel&) = delete;
};

writer::MoeSpec spec(writer::Layout layout, int layers = 2) {
  writer::MoeSpec s;
  s.layout = layout;
  s.num_layers = layers;
  s.num_experts = 8;
  s.hidden = 64;
  s.intermediate = 32;
  return s;
}

// One writer checkpoint (FP8 channel) loaded through the C API and through the C++ library.
struct Both {
  CRegistry r;
  BuiltPlugins p;
  TempDir d;
  writer::WrittenCheckpoint w;
  CModel c;
  LoadedModel m;
  Both(writer::Layout layout, int layers, const moeq_load_options* c_options = nullptr, const LoadOptions& options = {})
      : w(writer::write_ct_fp8_channel(d / "ckpt", spec(layout, layers))),
        c(r.r, w.dir, c_options),
        m(load_dir(w.dir, p.registry(), options)) {}
};

// The status of `code` and the thread's message, for CHECKs on both.
struct Failure {
  moeq_status_code code;
  std::string message;
};
Failure failure(moeq_status_code code) { return {code, moeq_last_error_message()}; }
bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

moeq_layer_info info_of(const moeq_model* m, size_t li) {
  moeq_layer_info info{};
  info.struct_size = sizeof info;
  REQUIRE_MESSAGE(moeq_model_layer_info(m, li, &info) == MOEQ_STATUS_CODE_OK, moeq_last_error_message());
  return info;
}

}  // namespace

TEST_CASE("C API: a NULL handle or pointer, a bad directory or bad options fail with a code and a message") {
  // Before any failure this thread reads OK and "" (a fresh thread: the suite's earlier cases
  // may have failed on this one).
  std::thread([] {
    CHECK(moeq_last_error_code() == MOEQ_STATUS_CODE_OK);
    CHECK(std::string(moeq_last_error_message()).empty());
  }).join();

  moeq_registry* reg = nullptr;
  Failure f = failure(moeq_registry_open(MOEQ_TEST_PLUGIN_DIR, 0, nullptr));
  CHECK(f.code == MOEQ_STATUS_CODE_INVALID_ARGUMENT);
  CHECK(f.message == "moeq_registry_open: out is NULL");
  CHECK(moeq_last_error_code() == MOEQ_STATUS_CODE_INVALID_ARGUMENT);

  f = failure(moeq_registry_open("/nonexistent/moeq-plugins", 0, &reg));
  CHECK(f.code == MOEQ_STATUS_CODE_NOT_FOUND);
  CHECK(reg == nullptr);
  CHECK(has(f.message, "plugin_dir '/nonexistent/moeq-plugins': no such directory"));
  TempDir empty;
  f = failure(moeq_registry_open(empty.path().c_str(), MOEQ_REGISTRY_NO_DEFAULT_PATH, &reg));
  CHECK(f.code == MOEQ_STATUS_CODE_NOT_FOUND);
  CHECK(has(f.message, "no plugin loaded (searched: " + std::filesystem::weakly_canonical(empty.path()).string()));
  f = failure(moeq_registry_open(nullptr, MOEQ_REGISTRY_NO_DEFAULT_PATH, &reg));
  CHECK(f.code == MOEQ_STATUS_CODE_INVALID_ARGUMENT);
  f = failure(moeq_registry_open(MOEQ_TEST_PLUGIN_DIR, 8u, &reg));
  CHECK(f.code == MOEQ_STATUS_CODE_INVALID_ARGUMENT);
  CHECK(has(f.message, "flags 8 hold unknown bits 8 (known: MOEQ_REGISTRY_ALLOW_UNTRUSTED 1"));
  CHECK(moeq_registry_num_plugins(nullptr) == 0);
  CHECK(moeq_last_error_code() == MOEQ_STATUS_CODE_INVALID_ARGUMENT);
  CHECK(moeq_registry_plugin_name(nullptr, 0) == nullptr);
  CHECK(std::string(moeq_registry_refused(nullptr)).empty());
  moeq_registry_free(nullptr);  // nothing
  moeq_model_free(nullptr);

  CRegistry r;
  CHECK(moeq_registry_num_plugins(r.r) >= 3);
  std::vector<std::string> names;
  for (size_t i = 0; i < moeq_registry_num_plugins(r.r); ++i) names.emplace_back(moeq_registry_plugin_name(r.r, i));
  CHECK(std::find(names.begin(), names.end(), "compressed_tensors") != names.end());
  CHECK(moeq_registry_plugin_name(r.r, names.size()) == nullptr);

  TempDir d;
  auto w = writer::write_ct_fp8_channel(d / "ckpt", spec(writer::Layout::kPerExpert, 1));
  moeq_model* m = nullptr;
  f = failure(moeq_model_load(nullptr, w.dir.c_str(), nullptr, &m));
  CHECK(f.code == MOEQ_STATUS_CODE_INVALID_ARGUMENT);
  CHECK(f.message == "moeq_model_load: registry is NULL");
  f = failure(moeq_model_load(r.r, nullptr, nullptr, &m));
  CHECK(f.message == "moeq_model_load: dir is NULL");
  f = failure(moeq_model_load(r.r, (d / "absent").c_str(), nullptr, &m));
  CHECK(f.code != MOEQ_STATUS_CODE_OK);
  CHECK(has(f.message, (d / "absent").string()));
  CHECK(m == nullptr);

  moeq_load_options o;
  moeq_load_options_init(&o);
  o.tp_size = 2;
  o.tp_rank = 2;
  f = failure(moeq_model_load(r.r, w.dir.c_str(), &o, &m));
  CHECK(f.code == MOEQ_STATUS_CODE_INVALID_ARGUMENT);
  CHECK(has(f.message, "options->tp_rank must be in [0, 2), found 2"));
  moeq_load_options_init(&o);
  o.struct_size = 16;
  CHECK(failure(moeq_model_load(r.r, w.dir.c_str(), &o, &m)).message ==
        "moeq_model_load: options->struct_size is 16, expected at least 72 (call moeq_load_options_init first)");
  moeq_load_options_init(&o);
  o.online_scheme = "int4";
  f = failure(moeq_model_load(r.r, w.dir.c_str(), &o, &m));
  CHECK(has(f.message, "options->online_scheme 'int4' is not a scheme (expected one of int8, fp8-tensor"));
  moeq_load_options_init(&o);
  o.plugin = "no_such_plugin";
  f = failure(moeq_model_load(r.r, w.dir.c_str(), &o, &m));
  CHECK(f.code == MOEQ_STATUS_CODE_NOT_FOUND);
  CHECK(has(f.message, "options->plugin 'no_such_plugin' is not loaded in this registry (loaded: "));
  moeq_load_options_init(&o);
  o.device = {kDLOpenCL, 0};
  CHECK(has(failure(moeq_model_load(r.r, w.dir.c_str(), &o, &m)).message, "found device type 4:0"));
  moeq_load_options_init(&o);
  o.workspace = 7;
  CHECK(has(failure(moeq_model_load(r.r, w.dir.c_str(), &o, &m)).message, "options->workspace must be"));

  // A strict-load failure keeps the loader's message and code: a NaN expert weight.
  TempDir d2;
  auto bad = writer::write_unquantized(d2 / "ckpt", spec(writer::Layout::kPerExpert, 1));
  rewrite_tensors(bad.dir, [](TensorMap& t) {
    set_element(t.at("model.layers.0.mlp.experts.3.up_proj.weight"), 5, std::numeric_limits<float>::quiet_NaN());
  });
  f = failure(moeq_model_load(r.r, bad.dir.c_str(), nullptr, &m));
  CHECK(f.code == MOEQ_STATUS_CODE_INVALID_ARGUMENT);
  CHECK(has(f.message, "model.layers.0.mlp.experts.3.up_proj.weight"));
  CHECK(m == nullptr);

  CModel cm(r.r, w.dir);
  CHECK(moeq_model_num_layers(nullptr) == 0);
  moeq_layer_info info{};
  info.struct_size = sizeof info;
  f = failure(moeq_model_layer_info(cm.m, 5, &info));
  CHECK(f.code == MOEQ_STATUS_CODE_INVALID_ARGUMENT);
  CHECK(f.message ==
        "moeq_model_layer_info: layer 5 is out of range: the model has 1 loaded MoE layers (the index counts loaded "
        "layers, not the model's layer numbers)");
  CHECK(failure(moeq_model_layer_info(cm.m, 0, nullptr)).message == "moeq_model_layer_info: info is NULL");
  info.struct_size = 8;
  CHECK(has(failure(moeq_model_layer_info(cm.m, 0, &info)).message, "info->struct_size is 8, expected at least 184"));
  CHECK(failure(moeq_model_apply(cm.m, 0, nullptr, nullptr, nullptr, nullptr, nullptr)).message ==
        "moeq_model_apply: x is NULL");
  CHECK(failure(moeq_model_route(nullptr, 0, nullptr, nullptr, nullptr)).message == "moeq_model_route: model is NULL");
}

TEST_CASE("C API: route refuses a wrong dtype, shape or device naming the tensor, expected and found") {
  CRegistry r;
  TempDir d;
  auto w = writer::write_ct_fp8_channel(d / "ckpt", spec(writer::Layout::kPerExpert, 1));
  CModel cm(r.r, w.dir);
  HostTensor x(DType::F32, {3, 64}), ids(DType::I32, {3, 2}), wt(DType::F32, {3, 2});
  REQUIRE(moeq_model_route(cm.m, 0, &x.t, &ids.t, &wt.t) == MOEQ_STATUS_CODE_OK);

  HostTensor xi(DType::I32, {3, 64});
  Failure f = failure(moeq_model_route(cm.m, 0, &xi.t, &ids.t, &wt.t));
  CHECK(f.code == MOEQ_STATUS_CODE_INVALID_ARGUMENT);
  CHECK(f.message ==
        "moeq_model_route: route on model.layers.0.mlp: hidden must be [M, 64] F32/BF16/F16 on the host, found "
        "[3, 64] I32 on cpu");
  HostTensor xs(DType::F32, {3, 32});
  CHECK(has(failure(moeq_model_route(cm.m, 0, &xs.t, &ids.t, &wt.t)).message,
            "hidden must be [M, 64] F32/BF16/F16 on the host, found [3, 32] F32 on cpu"));
  HostTensor ids3(DType::I32, {3, 3});
  CHECK(has(failure(moeq_model_route(cm.m, 0, &x.t, &ids3.t, &wt.t)).message,
            "topk_ids must be [3, 2] I32 on the host, found [3, 3] I32 on cpu"));
  HostTensor wbf(DType::BF16, {3, 2});
  CHECK(has(failure(moeq_model_route(cm.m, 0, &x.t, &ids.t, &wbf.t)).message,
            "topk_weights must be [3, 2] F32 on the host, found [3, 2] BF16 on cpu"));
  HostTensor x1(DType::F32, {192});
  CHECK(has(failure(moeq_model_route(cm.m, 0, &x1.t, &ids.t, &wt.t)).message, "found [192] F32 on cpu"));
  DLTensor on_gpu = x.t;
  on_gpu.device = {kDLCUDA, 0};
  f = failure(moeq_model_route(cm.m, 0, &on_gpu, &ids.t, &wt.t));
  CHECK(f.code == MOEQ_STATUS_CODE_UNIMPLEMENTED);
  CHECK(has(f.message, "hidden is on cuda:0: routing runs on the host only"));
}

TEST_CASE("C API: layer_info equals the C++ model's layer, geometry and resolved routing (TP, EP, options)") {
  moeq_load_options o;
  moeq_load_options_init(&o);
  o.tp_rank = 1;
  o.tp_size = 2;
  o.ep_rank = 1;
  o.ep_size = 2;
  o.threads = 1;
  o.max_tokens = 16;
  o.workspace = MOEQ_WORKSPACE_PER_LAYER;
  o.plugin = "compressed_tensors";
  LoadOptions lo;
  lo.placement = {1, 2, 1, 2};
  lo.threads = 1;
  lo.max_tokens = 16;
  lo.shared_workspace = false;
  lo.pin_plugin = "compressed_tensors";
  Both b(writer::Layout::kDeepSeekV3, 2, &o, lo);
  const LoadedModel& m = b.m;
  REQUIRE(moeq_model_num_layers(b.c.m) == m.layers.size());
  REQUIRE(m.layers.size() == 2);
  for (size_t li = 0; li < m.layers.size(); ++li) {
    const LoadedLayer& l = *m.layers[li];
    const moeq_layer_info info = info_of(b.c.m, li);
    CHECK(info.struct_size == sizeof info);
    CHECK(info.layer == l.report.layer);
    CHECK(std::string(info.prefix) == l.report.prefix);
    CHECK(std::string(info.prefix) == "model.layers." + std::to_string(li) + ".mlp");
    CHECK(std::string(info.model_type) == "deepseek_v3");
    CHECK(std::string(info.plugin) == "compressed_tensors");
    CHECK(std::string(info.describe_json) == l.report.describe_json);
    const moeq_layer_geometry& g = info.geometry;
    CHECK(g.num_experts == 8);
    CHECK(g.num_local_experts == 4);
    CHECK(g.first_local_expert == 4);
    CHECK(g.hidden_size == 64);
    CHECK(g.intermediate_size == 32);
    CHECK(g.intermediate_size_per_partition == 16);
    CHECK(g.tp_rank == 1);
    CHECK(g.tp_size == 2);
    CHECK(g.ep_rank == 1);
    CHECK(g.ep_size == 2);
    CHECK(g.top_k == 2);
    CHECK(std::memcmp(&g, &l.geometry, sizeof g) == 0);
    CHECK(info.device.device_type == kDLCPU);
    CHECK(info.x_dtypes == l.x_dtypes);
    CHECK(info.out_dtypes == l.out_dtypes);
    CHECK((info.x_dtypes & MOEQ_DTYPE_BIT_F32) != 0);
    CHECK(info.tokens_per_pass == l.tokens_per_pass);
    CHECK(info.workspace_bytes == (l.workspace ? l.workspace->bytes : l.workspace_bytes));
    // DeepSeek-V3 as the writer configures it: sigmoid, renormalized, scaled by 2.5, grouped,
    // the correction bias selecting.
    CHECK(info.scoring == MOEQ_SCORING_SIGMOID);
    CHECK(info.renormalize == 1);
    CHECK(info.routed_scaling_factor == doctest::Approx(2.5));
    CHECK(info.weight_on_input == 0);
    const json::object rj = json::parse(info.routing_json).as_object();
    CHECK(rj.at("known").as_bool());
    CHECK(rj.at("family").as_string() == "deepseek_v3");
    CHECK(rj.at("scoring").as_string() == "sigmoid");
    CHECK(rj.at("top_k").as_int64() == 2);
    CHECK(rj.at("renormalize").as_bool());
    CHECK(rj.at("n_group").as_int64() == 2);
    CHECK(rj.at("topk_group").as_int64() == 1);
    CHECK(rj.at("group_score").as_string() == "top2_sum");
    CHECK(rj.at("routed_scaling_factor").to_number<double>() == doctest::Approx(2.5));
    CHECK(rj.at("correction_bias").as_string() == "model.layers." + std::to_string(li) + ".mlp.gate.e_score_correction_bias");
    CHECK(rj.at("summary").as_string() == routing_summary(m.config.resolved_routing));
    CHECK(rj.at("fields").as_array().size() == m.config.resolved_routing.fields.size());
  }
}

TEST_CASE("C API: route equals route_layer for F32, BF16 and F16 hidden states") {
  Both b(writer::Layout::kDeepSeekV3, 2);
  const CModel& cm = b.c;
  const LoadedModel& m = b.m;
  const int64_t M = 9, H = 64, k = 2;
  for (DType dt : {DType::F32, DType::BF16, DType::F16})
    for (size_t li = 0; li < 2; ++li) {
      CAPTURE(dtype_name(dt));
      HostTensor x = HostTensor::of(dt, {M, H}, bf16_tokens(M, H, 40 + li));
      HostTensor ids(DType::I32, {M, k}), wt(DType::F32, {M, k});
      REQUIRE_MESSAGE(moeq_model_route(cm.m, li, &x.t, &ids.t, &wt.t) == MOEQ_STATUS_CODE_OK, moeq_last_error_message());
      // The C++ routing of the values the tensor holds (rounded to its dtype).
      const ref::Routing want = route_layer(m, li, x.floats(), M);
      for (int64_t i = 0; i < M * k; ++i) {
        CHECK(reinterpret_cast<const int32_t*>(ids.bytes.data())[i] == want.ids[static_cast<size_t>(i)]);
        CHECK(wt.get(static_cast<size_t>(i)) == want.weights[static_cast<size_t>(i)]);
      }
    }
  // Strided views route as their elements: hidden as every other row of a [2M, H] buffer.
  HostTensor big = HostTensor::of(DType::F32, {2 * M, H}, bf16_tokens(2 * M, H, 77));
  DLTensor view = big.t;
  int64_t shape[2] = {M, H}, strides[2] = {2 * H, 1};
  view.shape = shape;
  view.strides = strides;
  std::vector<float> rows;
  for (int64_t t = 0; t < M; ++t)
    for (int64_t c = 0; c < H; ++c) rows.push_back(big.get(static_cast<size_t>(2 * t * H + c)));
  HostTensor ids(DType::I32, {M, k}), wt(DType::F32, {M, k});
  REQUIRE(moeq_model_route(cm.m, 0, &view, &ids.t, &wt.t) == MOEQ_STATUS_CODE_OK);
  const ref::Routing want = route_layer(m, 0, rows, M);
  CHECK(std::equal(want.ids.begin(), want.ids.end(), reinterpret_cast<const int32_t*>(ids.bytes.data())));
  CHECK(wt.floats() == want.weights);
}

TEST_CASE("C API: apply on host F32 and BF16 tensors equals LoadedModel's apply and the float reference") {
  Both b(writer::Layout::kPerExpert, 2);
  const CModel& cm = b.c;
  const LoadedModel& m = b.m;
  const int64_t M = 11, H = 64, k = 2;
  for (size_t li = 0; li < 2; ++li) {
    const moeq_layer_info info = info_of(cm.m, li);
    REQUIRE((info.x_dtypes & MOEQ_DTYPE_BIT_BF16) != 0);
    REQUIRE((info.out_dtypes & MOEQ_DTYPE_BIT_BF16) != 0);
    const ref::Routing rt = random_routing(M, 8, k, 90 + li);
    HostTensor ids(DType::I32, {M, k}), wt = HostTensor::of(DType::F32, {M, k}, rt.weights);
    std::memcpy(ids.bytes.data(), rt.ids.data(), rt.ids.size() * 4);
    ref::MoeOptions act;
    const ref::ExpertWeights ew = m.dequantized(li, &act);
    for (DType xt : {DType::F32, DType::BF16})
      for (DType ot : {DType::F32, DType::BF16}) {
        CAPTURE(dtype_name(xt));
        CAPTURE(dtype_name(ot));
        HostTensor x = HostTensor::of(xt, {M, H}, bf16_tokens(M, H, 30 + li));
        HostTensor out(ot, {M, H});
        for (size_t i = 0; i < out.numel(); ++i) out.set(i, 123.0f);  // apply overwrites every element
        REQUIRE_MESSAGE(moeq_model_apply(cm.m, li, &x.t, &ids.t, &wt.t, &out.t, nullptr) == MOEQ_STATUS_CODE_OK,
                        moeq_last_error_message());
        const std::vector<float> xs = x.floats();
        const std::vector<float> want = m.apply(li, xs, M, rt);
        std::vector<float> want_in_out(want.size());
        for (size_t i = 0; i < want.size(); ++i)
          want_in_out[i] = ot == DType::BF16 ? bf16_to_float(float_to_bf16(want[i])) : want[i];
        CHECK(out.floats() == want_in_out);
        // Independent of the plugin's apply: the float forward on its dequantized weights.
        const double err = ref::relative_l2(out.floats(), ref::moe_forward(ew, xs, M, rt, act));
        CHECK(err <= (ot == DType::BF16 ? 5e-3 : 1e-5));
      }
  }
}

TEST_CASE("C API: apply refuses a wrong dtype or shape naming the tensor, with INVALID_ARGUMENT") {
  CRegistry r;
  TempDir d;
  auto w = writer::write_ct_fp8_channel(d / "ckpt", spec(writer::Layout::kPerExpert, 1));
  CModel cm(r.r, w.dir);
  const int64_t M = 3, H = 64, k = 2;
  HostTensor x = HostTensor::of(DType::F32, {M, H}, bf16_tokens(M, H, 1)), out(DType::F32, {M, H});
  HostTensor ids(DType::I32, {M, k}), wt = HostTensor::of(DType::F32, {M, k}, std::vector<float>(M * k, 0.5f));
  REQUIRE(moeq_model_apply(cm.m, 0, &x.t, &ids.t, &wt.t, &out.t, nullptr) == MOEQ_STATUS_CODE_OK);
  HostTensor xi(DType::I32, {M, H}), xs(DType::F32, {M, 32}), ids64(DType::I64, {M, k}), outs(DType::F32, {M + 1, H});
  struct Case {
    const char* name;
    const DLTensor *x, *ids, *w, *out;
  } cases[] = {{"x", &xi.t, &ids.t, &wt.t, &out.t},
               {"x", &xs.t, &ids.t, &wt.t, &out.t},
               {"topk_ids", &x.t, &ids64.t, &wt.t, &out.t},
               {"out", &x.t, &ids.t, &wt.t, &outs.t}};
  for (const Case& c : cases) {
    CAPTURE(c.name);
    const Failure f = failure(moeq_model_apply(cm.m, 0, c.x, c.ids, c.w, c.out, nullptr));
    CHECK(f.code == MOEQ_STATUS_CODE_INVALID_ARGUMENT);
    CHECK(has(f.message, c.name));
    CHECK(has(f.message, "model.layers.0.mlp"));
  }
  // The found shape and dtype are named.
  CHECK(has(failure(moeq_model_apply(cm.m, 0, &xs.t, &ids.t, &wt.t, &out.t, nullptr)).message, "32"));
  CHECK(has(failure(moeq_model_apply(cm.m, 0, &x.t, &ids64.t, &wt.t, &out.t, nullptr)).message, "I64"));
}

TEST_CASE("C API: dequantize_expert checks its buffers and gives the method's weights of one local expert") {
  moeq_load_options o;
  moeq_load_options_init(&o);
  o.ep_rank = 1;
  o.ep_size = 2;
  LoadOptions lo;
  lo.placement = {0, 1, 1, 2};
  Both b(writer::Layout::kPerExpert, 1, &o, lo);
  const CModel& cm = b.c;
  const LoadedModel& m = b.m;
  const writer::WrittenCheckpoint& w = b.w;
  const ref::ExpertWeights want = m.dequantized(0, nullptr);
  const int64_t H = 64, I = 32;
  const size_t n13 = 2 * I * H, n2 = H * I;
  std::vector<float> w13(n13 + 1, -7.0f), w2(n2, -7.0f);
  Failure f = failure(moeq_model_dequantize_expert(cm.m, 0, 0, w13.data(), n13 - 1, w2.data(), n2));
  CHECK(f.code == MOEQ_STATUS_CODE_INVALID_ARGUMENT);
  CHECK(f.message ==
        "moeq_model_dequantize_expert: dequantize_expert on model.layers.0.mlp: w13 holds 4095 floats, expected "
        "[2 * I_tp, H] = [64, 64] = 4096");
  CHECK(has(failure(moeq_model_dequantize_expert(cm.m, 0, 0, w13.data(), n13, w2.data(), 10)).message,
            "w2 holds 10 floats, expected [H, I_tp] = [64, 32] = 2048"));
  CHECK(has(failure(moeq_model_dequantize_expert(cm.m, 0, 4, w13.data(), n13, w2.data(), n2)).message,
            "local_expert must be in [0, 4), found 4"));
  CHECK(has(failure(moeq_model_dequantize_expert(cm.m, 0, -1, w13.data(), n13, w2.data(), n2)).message,
            "found -1"));
  CHECK(failure(moeq_model_dequantize_expert(cm.m, 0, 0, nullptr, n13, w2.data(), n2)).message ==
        "moeq_model_dequantize_expert: w13 is NULL");
  CHECK(std::all_of(w13.begin(), w13.end(), [](float v) { return v == -7.0f; }));  // nothing written on failure
  for (int64_t e = 0; e < 4; ++e) {
    CAPTURE(e);
    REQUIRE(moeq_model_dequantize_expert(cm.m, 0, e, w13.data(), w13.size(), w2.data(), w2.size()) ==
            MOEQ_STATUS_CODE_OK);
    CHECK(std::equal(w13.begin(), w13.begin() + n13, want.w13.begin() + e * n13));
    CHECK(std::equal(w2.begin(), w2.end(), want.w2.begin() + e * n2));
    CHECK(w13[n13] == -7.0f);  // nothing past the expert's weights
    // Independent of the plugin: the writer's float masters of global expert 4 + e (FP8 channel
    // codes times scales, unsharded and identical here at TP 1).
    const ref::ExpertWeights& master = w.layers[0].dequantized;
    CHECK(std::equal(w2.begin(), w2.end(), master.w2.begin() + (4 + e) * n2));
  }
}

TEST_CASE("C API: report_json is what moeq load --json prints, and a short buffer gets nothing but the size") {
  CRegistry r;
  TempDir d;
  auto w = writer::write_ct_fp8_channel(d / "ckpt", spec(writer::Layout::kGraniteFused));
  CModel cm(r.r, w.dir);
  size_t needed = 0;
  Failure f = failure(moeq_model_report_json(cm.m, nullptr, 0, &needed));
  CHECK(f.code == MOEQ_STATUS_CODE_INVALID_ARGUMENT);
  REQUIRE(needed > 100);
  CHECK(has(f.message, "the report needs " + std::to_string(needed) + " (with the NUL)"));
  std::string buf(needed - 1, 'x');
  CHECK(moeq_model_report_json(cm.m, buf.data(), buf.size(), nullptr) == MOEQ_STATUS_CODE_INVALID_ARGUMENT);
  CHECK(buf == std::string(needed - 1, 'x'));
  buf.assign(needed + 10, 'x');
  size_t again = 0;
  REQUIRE(moeq_model_report_json(cm.m, buf.data(), buf.size(), &again) == MOEQ_STATUS_CODE_OK);
  CHECK(again == needed);
  CHECK(buf[needed - 1] == '\0');
  const json::value report = json::parse(buf.c_str());
  CHECK(report.at("layers").as_array().size() == 2);
  CHECK(report.at("layers").at(0).at("plugin").as_string() == "compressed_tensors");
  CHECK(report.at("layers").at(0).at("waived").as_array().empty());
  CHECK(report.at("loaded").as_bool());
  CHECK(report.at("clean").as_bool());
  const CliRun cli = run_moeq_cli("load --json --plugin-dir " MOEQ_TEST_PLUGIN_DIR " " + w.dir.string(), "", false);
  REQUIRE(cli.code == 0);
  CHECK(json::parse(cli.out) == report);
}

TEST_CASE("C API: a registry freed before its models leaves them working, the last model releases it") {
  TempDir d;
  auto w = writer::write_ct_fp8_channel(d / "ckpt", spec(writer::Layout::kPerExpert, 1));
  moeq_registry* reg = nullptr;
  REQUIRE(moeq_registry_open(MOEQ_TEST_PLUGIN_DIR, MOEQ_REGISTRY_NO_DEFAULT_PATH, &reg) == MOEQ_STATUS_CODE_OK);
  moeq_model *a = nullptr, *b = nullptr;
  REQUIRE(moeq_model_load(reg, w.dir.c_str(), nullptr, &a) == MOEQ_STATUS_CODE_OK);
  REQUIRE(moeq_model_load(reg, w.dir.c_str(), nullptr, &b) == MOEQ_STATUS_CODE_OK);
  const int64_t before_free = host::live_param_bytes();
  moeq_registry_free(reg);
  CHECK(host::live_param_bytes() == before_free);
  const int64_t M = 4, H = 64, k = 2;
  HostTensor x = HostTensor::of(DType::F32, {M, H}, bf16_tokens(M, H, 3)), ids(DType::I32, {M, k}),
      wt(DType::F32, {M, k}), out_a(DType::F32, {M, H}), out_b(DType::F32, {M, H});
  REQUIRE(moeq_model_route(a, 0, &x.t, &ids.t, &wt.t) == MOEQ_STATUS_CODE_OK);
  REQUIRE(moeq_model_apply(a, 0, &x.t, &ids.t, &wt.t, &out_a.t, nullptr) == MOEQ_STATUS_CODE_OK);
  moeq_model_free(a);
  CHECK(host::live_param_bytes() < before_free);
  REQUIRE(moeq_model_apply(b, 0, &x.t, &ids.t, &wt.t, &out_b.t, nullptr) == MOEQ_STATUS_CODE_OK);
  CHECK(out_a.floats() == out_b.floats());
  CHECK(std::string(info_of(b, 0).plugin) == "compressed_tensors");
  moeq_model_free(b);
}

TEST_CASE("C API: the last error is per thread") {
  CRegistry r;
  moeq_registry* none = nullptr;
  REQUIRE(moeq_registry_open("/nonexistent/main-thread", 0, &none) == MOEQ_STATUS_CODE_NOT_FOUND);
  std::string in_a, in_b, fresh;
  moeq_status_code code_a{}, code_b{}, code_fresh{};
  std::thread ta([&] {
    moeq_model* m = nullptr;
    moeq_model_load(nullptr, "x", nullptr, &m);
    for (int i = 0; i < 200; ++i) moeq_model_num_layers(nullptr);  // fails again and again, same message
    in_a = moeq_last_error_message();
    code_a = moeq_last_error_code();
  });
  std::thread tb([&] {
    moeq_model* m = nullptr;
    for (int i = 0; i < 200; ++i) moeq_model_load(r.r, "/nonexistent/thread-b", nullptr, &m);
    in_b = moeq_last_error_message();
    code_b = moeq_last_error_code();
  });
  std::thread tc([&] {
    moeq_registry_num_plugins(r.r);  // succeeds: records nothing
    fresh = moeq_last_error_message();
    code_fresh = moeq_last_error_code();
  });
  ta.join();
  tb.join();
  tc.join();
  CHECK(in_a == "moeq_model_num_layers: model is NULL");
  CHECK(code_a == MOEQ_STATUS_CODE_INVALID_ARGUMENT);
  CHECK(has(in_b, "/nonexistent/thread-b"));
  CHECK(code_b != MOEQ_STATUS_CODE_OK);
  CHECK(fresh.empty());
  CHECK(code_fresh == MOEQ_STATUS_CODE_OK);
  CHECK(has(moeq_last_error_message(), "/nonexistent/main-thread"));
  CHECK(moeq_last_error_code() == MOEQ_STATUS_CODE_NOT_FOUND);
}

TEST_CASE("C API: without a plugin_dir the default search path finds this build's plugins, version and ABI") {
  moeq_registry* reg = nullptr;
  // No plugin_dir, no MOEQ_PLUGIN_PATH: moeq_tests links libmoeq statically, so the library's
  // directory is build/bin and build/plugins is <libdir>/../plugins (libmoeq_c.so in build/lib
  // finds the same directory; python/tests checks that through ctypes).
  const char* saved = std::getenv("MOEQ_PLUGIN_PATH");
  const std::string keep = saved ? saved : "";
  ::unsetenv("MOEQ_PLUGIN_PATH");
  const moeq_status_code c = moeq_registry_open(nullptr, 0, &reg);
  if (saved) ::setenv("MOEQ_PLUGIN_PATH", keep.c_str(), 1);
  REQUIRE_MESSAGE(c == MOEQ_STATUS_CODE_OK, moeq_last_error_message());
  bool found = false;
  for (size_t i = 0; i < moeq_registry_num_plugins(reg); ++i)
    found = found || std::string(moeq_registry_plugin_name(reg, i)) == "compressed_tensors";
  CHECK(found);
  moeq_registry_free(reg);
  CHECK(std::string(moeq_version()) == MOEQ_TEST_PROJECT_VERSION);
  uint32_t major = 0, minor = 0;
  moeq_abi_version(&major, &minor);
  CHECK(major == MOEQ_ABI_MAJOR);
  CHECK(minor == MOEQ_ABI_MINOR);
}

TEST_CASE("C API: libmoeq_c.so exports every C API function and no C++ symbol") {
  // Opened, never called: its copy of the core is separate from this binary's.
  void* lib = dlopen(MOEQ_TEST_C_LIBRARY, RTLD_NOW | RTLD_LOCAL);
  REQUIRE_MESSAGE(lib != nullptr, dlerror());
  for (const char* fn : {"moeq_version", "moeq_abi_version", "moeq_last_error_message", "moeq_last_error_code",
                         "moeq_registry_open", "moeq_registry_free", "moeq_registry_num_plugins",
                         "moeq_registry_plugin_name", "moeq_registry_refused", "moeq_load_options_init",
                         "moeq_model_load", "moeq_model_free", "moeq_model_num_layers", "moeq_model_layer_info",
                         "moeq_model_report_json", "moeq_model_route", "moeq_model_apply",
                         "moeq_model_dequantize_expert"}) {
    CAPTURE(fn);
    CHECK(dlsym(lib, fn) != nullptr);
  }
  // The C++ library (here load_model) and plugin entry points stay inside.
  CHECK(dlsym(lib, "_ZN4moeq10load_modelERKNS_10CheckpointERKNS_8RegistryERKNS_11LoadOptionsE") == nullptr);
  CHECK(dlsym(lib, "moeq_plugin_get_descriptor") == nullptr);
  dlclose(lib);
}

TEST_CASE("cuda: C API apply on device memory, captured in a CUDA graph, equals the eager apply") {
  if (!cuda_device_or_skip("C API GPU apply test")) return;
  CRegistry r;
  TempDir d;
  auto w = writer::write_ct_fp8_channel(d / "ckpt", spec(writer::Layout::kPerExpert, 1));
  moeq_load_options o;
  moeq_load_options_init(&o);
  o.device = {kDLCUDA, 0};
  o.max_tokens = 64;
  CModel cm(r.r, w.dir, &o);
  const moeq_layer_info info = info_of(cm.m, 0);
  CHECK(info.device.device_type == kDLCUDA);
  REQUIRE((info.x_dtypes & MOEQ_DTYPE_BIT_BF16) != 0);
  REQUIRE((info.out_dtypes & MOEQ_DTYPE_BIT_F32) != 0);
  const int64_t M = 48, H = 64, k = 2;
  const auto& drv = cuda::require();
  cuda::use_primary_context(0);
  cuda::DeviceMemory dx(M * H * 2), di(M * k * 4), dw(M * k * 4), dout(M * H * 4);
  auto ptr = [](const cuda::DeviceMemory& b) { return reinterpret_cast<void*>(static_cast<uintptr_t>(b.get())); };
  int64_t xs[2] = {M, H}, xst[2] = {H, 1}, ks[2] = {M, k}, kst[2] = {k, 1};
  const DLDevice dev{kDLCUDA, 0};
  DLTensor tx{ptr(dx), dev, 2, {kDLBfloat, 16, 1}, xs, xst, 0}, to{ptr(dout), dev, 2, {kDLFloat, 32, 1}, xs, xst, 0};
  DLTensor ti{ptr(di), dev, 2, {kDLInt, 32, 1}, ks, kst, 0}, tw{ptr(dw), dev, 2, {kDLFloat, 32, 1}, ks, kst, 0};
  cuda::CUstream s = nullptr;
  MOEQ_CU_CHECK(drv.cuStreamCreate(&s, cuda::kStreamNonBlocking));
  auto upload = [&](uint64_t seed) {
    const auto x = bf16_tokens(M, H, seed);
    const ref::Routing rt = random_routing(M, 8, k, seed + 1);
    std::vector<uint16_t> xb(x.size());
    for (size_t i = 0; i < x.size(); ++i) xb[i] = float_to_bf16(x[i]);
    MOEQ_CU_CHECK(drv.cuMemcpyHtoDAsync_v2(dx.get(), xb.data(), xb.size() * 2, s));
    MOEQ_CU_CHECK(drv.cuMemcpyHtoDAsync_v2(di.get(), rt.ids.data(), rt.ids.size() * 4, s));
    MOEQ_CU_CHECK(drv.cuMemcpyHtoDAsync_v2(dw.get(), rt.weights.data(), rt.weights.size() * 4, s));
    MOEQ_CU_CHECK(drv.cuMemsetD8_v2(dout.get(), 0xff, M * H * 4));  // NaNs: every element must be written
    MOEQ_CU_CHECK(drv.cuStreamSynchronize(s));
  };
  auto download = [&] {
    std::vector<float> v(static_cast<size_t>(M * H));
    MOEQ_CU_CHECK(drv.cuMemcpyDtoHAsync_v2(v.data(), dout.get(), v.size() * 4, s));
    MOEQ_CU_CHECK(drv.cuStreamSynchronize(s));
    return v;
  };
  // Eager applies on two inputs.
  std::vector<std::vector<float>> eager;
  for (uint64_t seed : {100u, 200u}) {
    upload(seed);
    REQUIRE_MESSAGE(moeq_model_apply(cm.m, 0, &tx, &ti, &tw, &to, s) == MOEQ_STATUS_CODE_OK, moeq_last_error_message());
    eager.push_back(download());
    CHECK(std::all_of(eager.back().begin(), eager.back().end(), [](float v) { return std::isfinite(v); }));
  }
  CHECK(eager[0] != eager[1]);
  // The same call captured once, replayed on each input.
  cuda::CUgraph graph = nullptr;
  cuda::CUgraphExec exec = nullptr;
  MOEQ_CU_CHECK(drv.cuStreamBeginCapture(s, cuda::kStreamCaptureModeGlobal));
  const moeq_status_code captured = moeq_model_apply(cm.m, 0, &tx, &ti, &tw, &to, s);
  const std::string message = moeq_last_error_message();
  REQUIRE(drv.cuStreamEndCapture(s, &graph) == cuda::kSuccess);
  REQUIRE_MESSAGE(captured == MOEQ_STATUS_CODE_OK, message);
  MOEQ_CU_CHECK(drv.cuGraphInstantiate(&exec, graph, 0));
  for (size_t round = 0; round < 2; ++round) {
    upload(round == 0 ? 100u : 200u);
    MOEQ_CU_CHECK(drv.cuGraphLaunch(exec, s));
    CHECK_MESSAGE(download() == eager[round], "graph replay " << round << " differs from the eager apply");
  }
  drv.cuGraphExecDestroy(exec);
  drv.cuGraphDestroy(graph);
  drv.cuStreamDestroy_v2(s);
}
