// Layers loaded onto a CUDA device through the ABI: the host puts every parameter in device
// memory (copy_to_param through pinned staging, the ledger unchanged), the plugin compiles its
// kernels in process_after_loading, and apply runs on the caller's stream. Every scheme is
// checked against the CPU path of the same plugin on the same checkpoint, the dequantized
// weights read back from the device must equal the CPU method's exactly, and apply is captured
// in a CUDA graph (global capture mode, which refuses allocations and synchronous calls) and
// replayed on new inputs. Without a driver or device every case skips, saying why.
//
// Bounds of GPU vs CPU (relative L2), and why they are not all 1e-3 end to end:
//   fp8, M <= 64:  1e-3 (measured ~1e-7 on an H200: the GEMMs differ in summation order only).
//   fp8, M = 300:  1e-2. Larger buckets run Hopper wgmma, whose fp8 accumulation is less precise
//                  (~1e-4), and that flips the fp8 rounding of some requantized intermediate
//                  elements (measured 2e-3..5e-3). Each GEMM on identical quantized inputs is
//                  held to 1e-3 by the kernel checks (test_gpu_kernels.cpp, `gpu*`).
//   bf16, int8 W8A16: the GPU holds the intermediate in BF16 (GEMM2's tensor-core operand), the
//                  CPU path in F32: 3e-3 vs the CPU path (measured 1.7e-3), and 1e-4 vs a float
//                  forward that rounds the intermediate to BF16 as the GPU does.
#include "ct_support.hpp"

#include <moeq/cuda_driver.hpp>
#include <moeq/staged_upload.hpp>
#include <moeq_writer/producers.hpp>

#include <boost/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <limits>
#include <thread>

using namespace moeq;
using namespace moeq::test;

namespace {

constexpr double kFp8SmallM = 1e-3;
constexpr double kFp8LargeM = 1e-2;
constexpr double kBf16Intermediate = 3e-3;
constexpr double kBf16Mirror = 1e-4;

// The MoE forward on float weights with the intermediate rounded to BF16 (what the bf16 and
// W8A16 kernels hold between the GEMMs); double accumulation.
std::vector<float> forward_bf16_intermediate(const ref::ExpertWeights& w, const std::vector<float>& x, int64_t m,
                                             const ref::Routing& r) {
  const int64_t H = w.hidden, I = w.intermediate;
  std::vector<float> out(static_cast<size_t>(m * H), 0.0f);
  std::vector<float> h(static_cast<size_t>(I));
  for (int64_t t = 0; t < m; ++t) {
    std::vector<double> acc(static_cast<size_t>(H), 0.0);
    for (int64_t j = 0; j < r.top_k; ++j) {
      const int64_t e = r.ids[t * r.top_k + j] - w.first_expert;
      if (e < 0 || e >= w.num_experts) continue;
      const float* w13 = w.w13.data() + e * 2 * I * H;
      const float* w2 = w.w2.data() + e * H * I;
      for (int64_t i = 0; i < I; ++i) {
        double g = 0, u = 0;
        for (int64_t k = 0; k < H; ++k) {
          g += double(w13[i * H + k]) * x[t * H + k];
          u += double(w13[(I + i) * H + k]) * x[t * H + k];
        }
        const float gf = static_cast<float>(g), uf = static_cast<float>(u);
        h[i] = bf16_to_float(float_to_bf16(gf / (1.0f + std::exp(-gf)) * uf));
      }
      for (int64_t n = 0; n < H; ++n) {
        double y = 0;
        for (int64_t i = 0; i < I; ++i) y += double(w2[n * I + i]) * h[i];
        acc[n] += double(r.weights[t * r.top_k + j]) * y;
      }
    }
    for (int64_t n = 0; n < H; ++n) out[t * H + n] = static_cast<float>(acc[n]);
  }
  return out;
}

LoadOptions on_cuda(LoadOptions o = {}) {
  o.device = {kDLCUDA, 0};
  return o;
}

writer::MoeSpec spec(writer::Layout layout, int64_t experts, int64_t hidden, int64_t inter, uint64_t seed) {
  writer::MoeSpec s;
  s.layout = layout;
  s.num_layers = 1;
  s.num_experts = experts;
  s.hidden = hidden;
  s.intermediate = inter;
  s.seed = seed;
  return s;
}

// Device buffers of one apply call, filled from host vectors.
struct DeviceIo {
  cuda::DeviceMemory x, ids, w, out;
  int64_t xs[2], ks[2], xst[2], kst[2];
  DLTensor tx{}, ti{}, tw{}, to{};

  DeviceIo(int64_t m, int64_t h, int64_t k)
      : x(static_cast<size_t>(m * h) * 2), ids(static_cast<size_t>(m * k) * 4), w(static_cast<size_t>(m * k) * 4),
        out(static_cast<size_t>(m * h) * 4), xs{m, h}, ks{m, k}, xst{h, 1}, kst{k, 1} {
    const DLDevice d{kDLCUDA, 0};
    tx = {ptr(x), d, 2, {kDLBfloat, 16, 1}, xs, xst, 0};
    ti = {ptr(ids), d, 2, {kDLInt, 32, 1}, ks, kst, 0};
    tw = {ptr(w), d, 2, {kDLFloat, 32, 1}, ks, kst, 0};
    to = {ptr(out), d, 2, {kDLFloat, 32, 1}, xs, xst, 0};
  }
  static void* ptr(const cuda::DeviceMemory& b) { return reinterpret_cast<void*>(static_cast<uintptr_t>(b.get())); }
  void upload(const std::vector<float>& xv, const ref::Routing& r, cuda::CUstream s) {
    const auto& d = cuda::require();
    std::vector<uint16_t> xb(xv.size());
    for (size_t i = 0; i < xv.size(); ++i) xb[i] = float_to_bf16(xv[i]);
    MOEQ_CU_CHECK(d.cuMemcpyHtoDAsync_v2(x.get(), xb.data(), xb.size() * 2, s));
    MOEQ_CU_CHECK(d.cuMemcpyHtoDAsync_v2(ids.get(), r.ids.data(), r.ids.size() * 4, s));
    MOEQ_CU_CHECK(d.cuMemcpyHtoDAsync_v2(w.get(), r.weights.data(), r.weights.size() * 4, s));
    MOEQ_CU_CHECK(d.cuStreamSynchronize(s));
  }
  std::vector<float> download(cuda::CUstream s) const {
    std::vector<float> v(out.size() / 4);
    MOEQ_CU_CHECK(cuda::require().cuMemcpyDtoHAsync_v2(v.data(), out.get(), out.size(), s));
    MOEQ_CU_CHECK(cuda::require().cuStreamSynchronize(s));
    return v;
  }
};

// The apply of layer li captured in a CUDA graph, replayed on two inputs; each replay must
// equal an eager apply on the same input bit for bit.
void check_graph_capture(const LoadedModel& m, size_t li, int64_t M, uint64_t seed) {
  const LoadedLayer& l = *m.layers[li];
  const auto& d = cuda::require();
  cuda::use_primary_context(0);
  const int64_t H = l.geometry.hidden_size, k = l.geometry.top_k;
  DeviceIo io(M, H, k);
  cuda::CUstream s = nullptr;
  MOEQ_CU_CHECK(d.cuStreamCreate(&s, cuda::kStreamNonBlocking));
  cuda::CUgraph graph = nullptr;
  cuda::CUgraphExec exec = nullptr;
  // The zero-copy apply on device tensors (the host's workspace, the caller's stream), captured.
  CHECK(l.workspace != nullptr);
  MOEQ_CU_CHECK(d.cuStreamBeginCapture(s, cuda::kStreamCaptureModeGlobal));
  std::string msg;
  bool failed = false;
  try {
    m.apply(li, io.tx, io.ti, io.tw, io.to, s);
  } catch (const Error& e) {
    failed = true;
    msg = e.what();
  }
  const cuda::CUresult end = d.cuStreamEndCapture(s, &graph);
  CHECK_MESSAGE(!failed, "apply under capture: " << msg);
  REQUIRE(end == cuda::kSuccess);
  MOEQ_CU_CHECK(d.cuGraphInstantiate(&exec, graph, 0));
  for (uint64_t round = 0; round < 2; ++round) {
    const auto x = bf16_tokens(M, H, seed + round);
    const auto r = random_routing(M, m.config.num_experts, k, seed + 10 + round);
    io.upload(x, r, s);
    MOEQ_CU_CHECK(d.cuGraphLaunch(exec, s));
    const std::vector<float> replayed = io.download(s);
    const std::vector<float> eager = m.apply(li, x, M, r);
    CHECK_MESSAGE(replayed == eager, "graph replay " << round << " differs from an eager apply");
  }
  d.cuGraphExecDestroy(exec);
  d.cuGraphDestroy(graph);
  d.cuStreamDestroy_v2(s);
}

// Loads `dir` on the CPU and on cuda:0 and compares every layer.
void check_against_cpu(const std::filesystem::path& dir, LoadOptions opt, const std::string& what,
                       bool graph = true) {
  BuiltPlugins p;
  LoadedModel cpu = load_dir(dir, p.registry(), opt);
  LoadedModel gpu = load_dir(dir, p.registry(), on_cuda(opt));
  REQUIRE(gpu.layers.size() == cpu.layers.size());
  for (size_t li = 0; li < gpu.layers.size(); ++li) {
    const LoadedLayer& g = *gpu.layers[li];
    CAPTURE(what);
    CAPTURE(g.report.prefix);
    CHECK(g.report.ok());
    CHECK(g.report.plugin == cpu.layers[li]->report.plugin);
    for (const auto& c : g.report.params) CHECK(c.written + c.defaulted == c.numel);
    for (const auto& prm : g.layer->params) CHECK(prm->device_ptr != 0);
    CHECK(g.report.describe_json.find("cuda:0") != std::string::npos);
    // The device holds exactly what the CPU method holds (codes, scales, int8 repack undone).
    ref::MoeOptions act_gpu, act_cpu;
    const ref::ExpertWeights wg = gpu.dequantized(li, &act_gpu), wc = cpu.dequantized(li, &act_cpu);
    CHECK(wg.w13 == wc.w13);
    CHECK(wg.w2 == wc.w2);
    for (int64_t M : {1, 7, 64, 300}) {
      CAPTURE(M);
      const int64_t H = g.geometry.hidden_size;
      const auto x = bf16_tokens(M, H, 500 + M);
      const auto r = random_routing(M, gpu.config.num_experts, g.geometry.top_k, 600 + M);
      const auto out_gpu = gpu.apply(li, x, M, r);
      const auto out_cpu = cpu.apply(li, x, M, r);
      const double err = ref::relative_l2(out_gpu, out_cpu);
      const double vs_ref = ref::relative_l2(out_gpu, ref::moe_forward(wc, x, M, r, act_cpu));
      MESSAGE(what << " M=" << M << ": GPU vs CPU rel L2 " << err << ", vs float reference " << vs_ref);
      if (act_cpu.a2.kind == ref::ActQuant::kNone) {
        CHECK(err <= kBf16Intermediate);
        const double mirror = ref::relative_l2(out_gpu, forward_bf16_intermediate(wc, x, M, r));
        MESSAGE(what << " M=" << M << ": GPU vs the BF16-intermediate forward " << mirror);
        CHECK(mirror <= kBf16Mirror);
      } else {
        // NOTE: where both GEMMs are mma.sync (fp32 sums of every k32 step) small M stays within
        // 1e-3 of the CPU path; wgmma's fp8 sums are coarser, and since the heuristics take
        // 64-row warp-specialized tiles from 28 rows an expert (e.g. 4 experts, top-2, M = 64)
        // a small M may run them too: those are held to the layer's 1e-2, as at large M (an
        // H100 gave 2.7e-3 at M = 64 for FP8 per-tensor, bench/RESULTS.md).
        const bool wgmma = wgmma_bucket(g.report.describe_json, M);
        CAPTURE(wgmma);
        CHECK(err <= (M <= 64 && !wgmma ? kFp8SmallM : kFp8LargeM));
      }
      CHECK(ref::relative_l2(out_cpu, std::vector<float>(out_cpu.size(), 0.0f)) > 0.5);  // not all zeros
    }
    if (graph) check_graph_capture(gpu, li, 48, 700);
  }
}

}  // namespace

TEST_CASE("cuda: FP8 block 128x128 / per-group experts through the ABI match the CPU path, graph-capturable") {
  if (!test::cuda_device_or_skip("GPU apply test")) return;
  TempDir d;
  auto w = writer::write_ct_fp8_block(d / "ckpt", spec(writer::Layout::kPerExpert, 8, 256, 192, 31));
  check_against_cpu(w.dir, {}, "fp8 block");
}

TEST_CASE("cuda: FP8 block at TP=2 (I/tp = 96: the scale grid refined to 32-row blocks) matches the CPU path") {
  if (!test::cuda_device_or_skip("GPU apply test")) return;
  TempDir d;
  auto w = writer::write_hf_fp8_block(d / "ckpt", spec(writer::Layout::kDeepSeekV3, 8, 256, 192, 32));
  LoadOptions o;
  o.placement.tp_size = 2;
  o.placement.tp_rank = 1;
  check_against_cpu(w.dir, o, "fp8 block tp2", false);
}

TEST_CASE("cuda: FP8 block at TP=2 (I/tp = 112: the scale grid refined to 16-element blocks) matches the CPU path") {
  // 112 = 7 x 16: every rank's K period of w2's scales is gcd(128, 112) = 16, half an fp8 MMA step.
  if (!test::cuda_device_or_skip("GPU apply test")) return;
  TempDir d;
  auto w = writer::write_hf_fp8_block(d / "ckpt", spec(writer::Layout::kDeepSeekV3, 8, 256, 224, 33));
  for (int rank : {0, 1}) {
    LoadOptions o;
    o.placement.tp_size = 2;
    o.placement.tp_rank = rank;
    check_against_cpu(w.dir, o, "fp8 block tp2 rank " + std::to_string(rank) + " (16-element blocks)", rank == 1);
  }
}

TEST_CASE("cuda: FP8 channel / per-token experts (Granite fused) match the CPU path, graph-capturable") {
  if (!test::cuda_device_or_skip("GPU apply test")) return;
  TempDir d;
  auto w = writer::write_ct_fp8_channel(d / "ckpt", spec(writer::Layout::kGraniteFused, 8, 128, 96, 33));
  check_against_cpu(w.dir, {}, "fp8 channel granite");
}

TEST_CASE("cuda: FP8 per-tensor, static and dynamic activations, match the CPU path") {
  if (!test::cuda_device_or_skip("GPU apply test")) return;
  TempDir d;
  auto st = writer::write_ct_fp8_tensor(d / "static", spec(writer::Layout::kPerExpert, 4, 128, 96, 34));
  check_against_cpu(st.dir, {}, "fp8 tensor static");
  auto dy = writer::write_ct_fp8_tensor(d / "dynamic", spec(writer::Layout::kPerExpert, 4, 128, 96, 35), false);
  check_against_cpu(dy.dir, {}, "fp8 tensor dynamic");
}

TEST_CASE("cuda: int8 W8A16 experts (repacked on the device) match the CPU path, graph-capturable") {
  if (!test::cuda_device_or_skip("GPU apply test")) return;
  TempDir d;
  auto w = writer::write_ct_int8_channel(d / "ckpt", spec(writer::Layout::kPerExpert, 8, 256, 192, 36));
  check_against_cpu(w.dir, {}, "int8 w8a16");
}

TEST_CASE("cuda: unquantized BF16 experts match the CPU path") {
  if (!test::cuda_device_or_skip("GPU apply test")) return;
  TempDir d;
  auto w = writer::write_unquantized(d / "ckpt", spec(writer::Layout::kPerExpert, 4, 256, 128, 37));
  check_against_cpu(w.dir, {}, "bf16");
}

// On a CUDA layer online_quant quantizes each projection on the device; the codes and scales
// must be the CPU schemes' bytes exactly (check_against_cpu compares the dequantized weights
// bit for bit), also at TP=2 where every rank quantizes the full rows and keeps its slice.
TEST_CASE("cuda: online quantization on the device gives the CPU's codes and scales exactly, every scheme") {
  if (!test::cuda_device_or_skip("GPU apply test")) return;
  TempDir d;
  // I = 320: fp8-block gets a ragged 64-row block in gate/up and a ragged column block in down.
  auto w = writer::write_unquantized(d / "ckpt", spec(writer::Layout::kPerExpert, 4, 256, 320, 41));
  auto g = writer::write_unquantized(d / "granite", spec(writer::Layout::kGraniteFused, 4, 128, 96, 42));
  // fp16 and fp32 sources: the kernels' other load paths (and one scratch set for fp32).
  auto h = writer::write_unquantized(d / "fp16", spec(writer::Layout::kPerExpert, 4, 256, 192, 46));
  auto f = writer::write_unquantized(d / "fp32", spec(writer::Layout::kGraniteFused, 4, 128, 96, 47));
  REQUIRE(rewrite_expert_weights_as(h.dir, DType::F16) == 12);
  REQUIRE(rewrite_expert_weights_as(f.dir, DType::F32) == 2);
  for (const char* scheme : {"int8", "fp8-tensor", "fp8-channel", "fp8-block"}) {
    LoadOptions o;
    o.online_scheme = scheme;
    check_against_cpu(w.dir, o, std::string("online ") + scheme, std::string(scheme) == "int8");
    check_against_cpu(g.dir, o, std::string("online granite ") + scheme, false);
    check_against_cpu(h.dir, o, std::string("online fp16 ") + scheme, false);
    check_against_cpu(f.dir, o, std::string("online fp32 granite ") + scheme, false);
    o.placement.tp_size = 2;
    o.placement.tp_rank = 1;
    check_against_cpu(w.dir, o, std::string("online tp2 ") + scheme, false);
    BuiltPlugins p;
    LoadedModel m = load_dir(w.dir, p.registry(), on_cuda(o));
    CHECK(m.layers[0]->report.describe_json.find("\"quantized_on\":\"cuda:0\"") != std::string::npos);
  }
}

// F32 sources at the ends of the float range (online_scale: never below FLT_MIN, one step down
// where qmax x s overflows): the device kernels' scales and codes equal the CPU's exactly.
TEST_CASE("cuda: online quantization of F32 weights at the ends of the float range equals the CPU's") {
  if (!test::cuda_device_or_skip("GPU apply test")) return;
  TempDir d;
  const int64_t H = 256, I = 192;
  auto w = writer::write_unquantized(d / "f32", spec(writer::Layout::kPerExpert, 4, H, I, 48));
  REQUIRE(rewrite_expert_weights_as(w.dir, DType::F32) == 12);
  rewrite_tensors(w.dir, [&](TensorMap& m) {
    EditableTensor& gate = m.at("model.layers.0.mlp.experts.0.gate_proj.weight");
    for (int64_t i = 0; i < 128 * H; ++i) set_element(gate, static_cast<size_t>(i), i == 0 ? 1e-45f : (i % 2 ? 2e-43f : 0.0f));
    EditableTensor& down = m.at("model.layers.0.mlp.experts.2.down_proj.weight");
    for (int64_t i = 0; i < H * I; ++i) set_element(down, static_cast<size_t>(i), i % 3 ? 1e-45f : -3e-44f);
    set_element(m.at("model.layers.0.mlp.experts.1.up_proj.weight"), 3 * H + 7, std::numeric_limits<float>::max());
  });
  BuiltPlugins p;
  for (const char* scheme : {"int8", "fp8-tensor", "fp8-channel", "fp8-block"}) {
    CAPTURE(scheme);
    LoadOptions o;
    o.online_scheme = scheme;
    LoadedModel cpu = load_dir(w.dir, p.registry(), o);
    LoadedModel gpu = load_dir(w.dir, p.registry(), on_cuda(o));
    REQUIRE(gpu.layers.size() == 1);
    CHECK(gpu.layers[0]->report.describe_json.find("\"quantized_on\":\"cuda:0\"") != std::string::npos);
    const ref::ExpertWeights wg = gpu.dequantized(0, nullptr), wc = cpu.dequantized(0, nullptr);
    CHECK(wg.w13 == wc.w13);
    CHECK(wg.w2 == wc.w2);
    CHECK(std::all_of(wg.w13.begin(), wg.w13.end(), [](float v) { return std::isfinite(v); }));
  }
}

// The host serializes calls on one method (abi.h): LoadedModel::apply from eight threads on one
// CUDA layer, whose method has one workspace, gives the serial result every time.
TEST_CASE("cuda: apply from eight threads on one layer gives the serial result") {
  if (!test::cuda_device_or_skip("GPU apply test")) return;
  TempDir d;
  auto w = writer::write_ct_fp8_channel(d / "ckpt", spec(writer::Layout::kPerExpert, 8, 256, 128, 49));
  BuiltPlugins p;
  LoadedModel m = load_dir(w.dir, p.registry(), on_cuda());
  const int64_t M = 48;
  const auto x = bf16_tokens(M, 256, 50);
  const auto r = random_routing(M, m.config.num_experts, m.layers[0]->geometry.top_k, 51);
  const std::vector<float> serial = m.apply(0, x, M, r);
  std::vector<int> differ(8, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) differ[t] += m.apply(0, x, M, r) != serial;
    });
  for (auto& t : threads) t.join();
  for (int t = 0; t < 8; ++t) CHECK(differ[t] == 0);
}

// The device quantizer flags a NaN or infinite source weight (the lowest flat index, read back
// with the codes) and the load fails as on the CPU, naming the element, with nothing left
// allocated (parameters and the scratch pool); per-expert and Granite's fused tensor.
TEST_CASE("cuda: a NaN or infinite source weight fails the device quantization naming the element") {
  if (!test::cuda_device_or_skip("GPU apply test")) return;
  TempDir d;
  const int64_t H = 256, I = 192;
  auto w = writer::write_unquantized(d / "ckpt", spec(writer::Layout::kPerExpert, 4, H, I, 44));
  auto g = writer::write_unquantized(d / "granite", spec(writer::Layout::kGraniteFused, 4, H, I, 45));
  rewrite_tensors(w.dir, [&](TensorMap& m) {
    set_element(m.at("model.layers.0.mlp.experts.1.down_proj.weight"), 130 * I + 140, std::nanf(""));
    set_element(m.at("model.layers.0.mlp.experts.1.down_proj.weight"), 131 * I + 2, -INFINITY);
  });
  rewrite_tensors(g.dir, [&](TensorMap& m) {
    set_element(m.at("model.layers.0.block_sparse_moe.input_linear.weight"), (3 * 2 * I + 5) * H + 9, INFINITY);
  });
  BuiltPlugins p;
  {
    LoadOptions warm;
    warm.online_scheme = "int8";
    (void)error_of([&] { load_dir(w.dir, p.registry(), on_cuda(warm)); });  // JIT modules stay loaded
  }
  const cuda::MemoryInfo before = cuda::memory_info();
  for (const char* scheme : {"int8", "fp8-tensor", "fp8-channel", "fp8-block"}) {
    CAPTURE(scheme);
    LoadOptions o;
    o.online_scheme = scheme;
    const std::string e = error_of([&] { load_dir(w.dir, p.registry(), on_cuda(o)); });
    CHECK(e.find("model.layers.0.mlp.experts.1.down_proj.weight: w2 (down_proj) of expert 1, element [130, 140] is NaN") !=
          std::string::npos);
    const std::string f = error_of([&] { load_dir(g.dir, p.registry(), on_cuda(o)); });
    CHECK(f.find("model.layers.0.block_sparse_moe.input_linear.weight: w1 (gate_proj) of expert 3, element [5, 9] is +inf") !=
          std::string::npos);
    CHECK(host::live_param_bytes() == 0);
  }
  // The failed loads gave back their parameters and the quantizer's scratch pool (the driver and
  // the other schemes' JIT modules may keep a few MiB).
  const cuda::MemoryInfo after = cuda::memory_info();
  CHECK(before.free - std::min(before.free, after.free) <= (std::size_t{8} << 20));
}

// Onto a device the NaN/Inf scan of the weights rides on their copy into staging (or runs ahead
// of the plugin, as on the CPU): either way a non-finite fp8 weight fails the load naming the
// same tensor, expert and element as the CPU load (the first of two in one tensor), for
// per-expert tensors, Granite's fused one, and under TP=2 only in the rank's own share. A clean
// load scans every weight byte while packing, none afterwards.
TEST_CASE("cuda: a non-finite weight fails a device load naming the element, scanned while packing or ahead") {
  if (!test::cuda_device_or_skip("GPU apply test")) return;
  TempDir d;
  const int64_t H = 256, I = 192;
  auto w = writer::write_ct_fp8_channel(d / "ckpt", spec(writer::Layout::kPerExpert, 8, H, I, 61));
  auto g = writer::write_ct_fp8_channel(d / "granite", spec(writer::Layout::kGraniteFused, 4, H, I, 62));
  BuiltPlugins p;
  using WS = LoadOptions::WeightScan;
  {  // clean: every byte of this rank's weights scanned while packed
    LoadOptions o = on_cuda();
    o.weight_scan = WS::kWhilePacking;
    LoadedModel m = load_dir(w.dir, p.registry(), o);
    const LayerReport& r = m.layers[0]->report;
    CHECK(r.bytes_scanned_after == 0);
    CHECK(r.bytes_scanned_packing == 8 * 3 * H * I);  // fp8: a byte an element
    o.placement.tp_size = 2;
    o.placement.tp_rank = 1;
    LoadedModel half = load_dir(w.dir, p.registry(), o);
    CHECK(half.layers[0]->report.bytes_scanned_after == 0);
    CHECK(half.layers[0]->report.bytes_scanned_packing == 8 * 3 * H * I / 2);
  }
  rewrite_tensors(w.dir, [&](TensorMap& m) {
    set_element(m.at("model.layers.0.mlp.experts.3.gate_proj.weight"), 40 * H + 17, std::nanf(""));  // rank 0's rows
    set_element(m.at("model.layers.0.mlp.experts.3.gate_proj.weight"), 150 * H + 3, std::nanf(""));  // rank 1's rows
    set_element(m.at("model.layers.0.mlp.experts.5.down_proj.weight"), 200 * I + 120, std::nanf(""));  // rank 1's columns
  });
  rewrite_tensors(g.dir, [&](TensorMap& m) {
    set_element(m.at("model.layers.0.block_sparse_moe.input_linear.weight"), (2 * 2 * I + I + 7) * H + 9, std::nanf(""));
  });
  const std::string gate = "model.layers.0.mlp.experts.3.gate_proj.weight: w1 (gate_proj) of expert 3, element [";
  const std::string down = "model.layers.0.mlp.experts.5.down_proj.weight: w2 (down_proj) of expert 5, element [200, 120] is NaN";
  const std::string fused =
      "model.layers.0.block_sparse_moe.input_linear.weight: w3 (up_proj) of expert 2, element [7, 9] is NaN";
  const std::string cpu = error_of([&] { load_dir(w.dir, p.registry()); });
  const std::string cpu_fused = error_of([&] { load_dir(g.dir, p.registry()); });
  CHECK(cpu.find(gate + "40, 17] is NaN") != std::string::npos);
  CHECK(cpu.find(down) != std::string::npos);
  CHECK(cpu_fused.find(fused) != std::string::npos);
  for (WS mode : {WS::kWhilePacking, WS::kAhead}) {
    CAPTURE(static_cast<int>(mode));
    LoadOptions o = on_cuda();
    o.weight_scan = mode;
    const std::string e = error_of([&] { load_dir(w.dir, p.registry(), o); });
    CHECK(e.find(gate + "40, 17] is NaN") != std::string::npos);
    CHECK(e.find(gate + "150, 3]") == std::string::npos);  // the first of the tensor only
    CHECK(e.find(down) != std::string::npos);
    CHECK(error_of([&] { load_dir(g.dir, p.registry(), o); }).find(fused) != std::string::npos);
    CHECK(host::live_param_bytes() == 0);
    // TP=2: rank 1 meets the NaN in its own rows ([150, 3] of the whole tensor) and columns.
    o.placement.tp_size = 2;
    o.placement.tp_rank = 1;
    const std::string r1 = error_of([&] { load_dir(w.dir, p.registry(), o); });
    CHECK(r1.find(gate + "150, 3] is NaN") != std::string::npos);
    CHECK(r1.find(down) != std::string::npos);
    // Rank 0's share of gate_proj holds [40, 17]; its w2 columns [0, 96) miss [200, 120].
    o.placement.tp_rank = 0;
    const std::string r0 = error_of([&] { load_dir(w.dir, p.registry(), o); });
    CHECK(r0.find(gate + "40, 17] is NaN") != std::string::npos);
    CHECK(r0.find("down_proj") == std::string::npos);
  }
}

// Eight layers loaded on eight threads share the device's quantizer scratch pool, which lends
// at most three sets (one BF16 expert) at a time: loads wait for a set and still give every
// layer the CPU's codes and scales exactly; the pool's memory is gone after the load.
TEST_CASE("cuda: online quantization of eight layers on eight threads shares one bounded scratch pool") {
  if (!test::cuda_device_or_skip("GPU apply test")) return;
  TempDir d;
  writer::MoeSpec s = spec(writer::Layout::kPerExpert, 4, 256, 192, 43);
  s.num_layers = 8;
  auto w = writer::write_unquantized(d / "ckpt", s);
  for (const char* scheme : {"int8", "fp8-block"}) {
    LoadOptions o;
    o.online_scheme = scheme;
    o.threads = 8;
    BuiltPlugins p;
    LoadedModel cpu = load_dir(w.dir, p.registry(), o);
    load_dir(w.dir, p.registry(), on_cuda(o));  // warm: kernel modules the JIT keeps loaded
    const cuda::MemoryInfo before = cuda::memory_info();
    std::size_t held = 0;
    {
      LoadedModel gpu = load_dir(w.dir, p.registry(), on_cuda(o));
      REQUIRE(gpu.layers.size() == 8);
      std::size_t params = 0;
      for (size_t li = 0; li < 8; ++li) {
        CAPTURE(scheme);
        CAPTURE(li);
        CHECK(gpu.layers[li]->report.ok());
        const ref::ExpertWeights wg = gpu.dequantized(li, nullptr), wc = cpu.dequantized(li, nullptr);
        CHECK(wg.w13 == wc.w13);
        CHECK(wg.w2 == wc.w2);
        for (const auto& prm : gpu.layers[li]->layer->params) params += static_cast<std::size_t>(prm->numel) * dtype_size(prm->dtype);
      }
      held = before.free - cuda::memory_info().free;
      MESSAGE(scheme << ": 8 layers hold " << held << " device bytes, parameters " << params);
      CHECK(held >= params);
    }
    // Everything the load and the layers took is back (the driver may keep a few MiB of its own).
    const cuda::MemoryInfo after = cuda::memory_info();
    CHECK(before.free - std::min(before.free, after.free) <= (std::size_t{8} << 20));
  }
}

TEST_CASE("cuda: a shape the kernels cannot run fails at load naming it, a bad apply input is a clear error") {
  if (!test::cuda_device_or_skip("GPU apply test")) return;
  TempDir d;
  BuiltPlugins p;
  // H = 200 is not a multiple of 16.
  auto odd = writer::write_ct_fp8_block(d / "odd", spec(writer::Layout::kPerExpert, 4, 200, 96, 38), 64, 128);
  try {
    (void)load_dir(odd.dir, p.registry(), on_cuda());
    FAIL("an H=200 layer loaded on cuda");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("hidden size must be a positive multiple of 16, found 200") != std::string::npos);
  }
  CHECK(host::live_param_bytes() == 0);
  // F32 x on the device: the kernels take BF16.
  auto w = writer::write_ct_fp8_channel(d / "ok", spec(writer::Layout::kPerExpert, 4, 128, 96, 39));
  LoadedModel m = load_dir(w.dir, p.registry(), on_cuda());
  const LoadedLayer& l = *m.layers[0];
  cuda::use_primary_context(0);
  DeviceIo io(4, 128, l.geometry.top_k);
  io.tx.dtype = {kDLFloat, 32, 1};
  moeq_apply_args a{sizeof(moeq_apply_args), l.method, &io.tx, &io.ti, &io.tw, &io.to, nullptr};
  moeq_status_code code;
  std::string msg;
  REQUIRE(host::take_status(l.plugin->api->apply(&a), code, msg));
  CHECK(msg.find("the CUDA kernels take BF16 x, found F32") != std::string::npos);
  // x on the host for a CUDA layer.
  io.tx.dtype = {kDLBfloat, 16, 1};
  io.tx.device = {kDLCPU, 0};
  REQUIRE(host::take_status(l.plugin->api->apply(&a), code, msg));
  CHECK(msg.find("x must be on cuda:0") != std::string::npos);
  // A well-formed apply without the host's workspace (ABI 1.2): refused, naming the bytes.
  io.tx.device = {kDLCUDA, 0};
  REQUIRE(host::take_status(l.plugin->api->apply(&a), code, msg));
  CHECK(code == MOEQ_STATUS_CODE_FAILED_PRECONDITION);
  CHECK(msg.find("the host lent a workspace of 0 bytes") != std::string::npos);
  REQUIRE(l.workspace != nullptr);
  a.workspace = l.workspace->data;
  a.workspace_bytes = l.workspace->bytes;
  CHECK_FALSE(host::take_status(l.plugin->api->apply(&a), code, msg));
  MOEQ_CU_CHECK(cuda::require().cuCtxSynchronize());
  // The model's device apply checks dtypes against what apply_info declared.
  io.tx.dtype = {kDLFloat, 32, 1};
  try {
    m.apply(0, io.tx, io.ti, io.tw, io.to, nullptr);
    FAIL("F32 x accepted");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("x must be BF16 for compressed_tensors, found F32") != std::string::npos);
  }
}

TEST_CASE("cuda: the compressed_tensors descriptor says CUDA apply and graph capture") {
  BuiltPlugins p;
  const LoadedPlugin* ct = p.registry().find("compressed_tensors");
  REQUIRE(ct != nullptr);
  CHECK((ct->descriptor->capabilities & MOEQ_CAP_CUDA_APPLY) != 0);
  CHECK((ct->descriptor->capabilities & MOEQ_CAP_GRAPH_CAPTURABLE) != 0);
}

TEST_CASE("cuda: checkpoints written by llm-compressor and ModelOpt load on the device and match the CPU path") {
  if (!test::cuda_device_or_skip("GPU apply test")) return;
  const std::filesystem::path real = std::filesystem::path(MOEQ_TEST_FIXTURE_DIR) / "real";
  for (const char* name : {"qwen3_moe-fp8_block-oneshot", "qwen3_moe-fp8_static-oneshot",
                           "qwen3_moe-fp8_dynamic-oneshot-layer1_ignored", "mixtral-fp8_block-model_free",
                           "mixtral-int8_w8a16-oneshot", "modelopt/qwen3moe-fp8", "modelopt/qwen3moe-fp8-pc-pt",
                           "modelopt/qwen3moe-fp8-pb-wo"})
    check_against_cpu(real / name, {}, name, false);
}

TEST_CASE("cuda: FP8 weight-only experts (input_activations null) have no kernel: refused at load, naming why") {
  if (!test::cuda_device_or_skip("GPU apply test")) return;
  TempDir d;
  auto w = writer::write_ct_fp8_channel(d / "ckpt", spec(writer::Layout::kPerExpert, 4, 128, 96, 40));
  const std::filesystem::path cfg = w.dir / "config.json";
  std::ifstream in(cfg);
  boost::json::value v = boost::json::parse(std::string(std::istreambuf_iterator<char>(in), {}));
  in.close();
  for (auto& [name, group] : v.at("quantization_config").at("config_groups").as_object())
    group.as_object()["input_activations"] = nullptr;
  std::ofstream(cfg) << boost::json::serialize(v);
  BuiltPlugins p;
  REQUIRE(load_dir(w.dir, p.registry()).layers.size() == 1);  // the CPU runs it
  try {
    (void)load_dir(w.dir, p.registry(), on_cuda());
    FAIL("FP8 weight-only loaded on cuda");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("fp8 weights need an activation quantization mode") != std::string::npos);
  }
  CHECK(host::live_param_bytes() == 0);
}
