#include "gpu_experts.hpp"

#include <moeq/sdk/cuda.hpp>
#include "gpu/kernel_sources.hpp"

#include <moeq/sdk/sdk.hpp>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <numeric>
#include <thread>

namespace moeq::ct {
namespace {

namespace mk = ::moeq_kernels;

constexpr const char* kPluginName = "compressed_tensors";
constexpr const char* kPluginVersion = "0.2.0";
constexpr int kAttrMaxSmemOptin = 97;  // CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
// Workspace budget of one layer (each method owns its workspace, so that applies of different
// layers may run on different streams at once): max_tokens is the largest power of two (at
// most 8192) whose workspace fits; larger batches run in passes of max_tokens.
// MOEQ_CT_MAX_TOKENS overrides. At 64 MiB: Qwen3-30B-A3B 512 tokens a pass, DeepSeek-V3 128.
constexpr std::size_t kWorkspaceBudget = std::size_t{64} << 20;

std::string s(int64_t v) { return std::to_string(v); }

std::string dl_dtype_name(DLDataType t) {
  if (t.code == kDLBfloat && t.bits == 16) return "BF16";
  if (t.code == kDLFloat) return "F" + s(t.bits);
  if (t.code == kDLInt) return "I" + s(t.bits);
  return "dtype(code " + s(t.code) + ", " + s(t.bits) + " bits)";
}

bool is(DLDataType t, uint8_t code, uint8_t bits) { return t.code == code && t.bits == bits && t.lanes == 1; }

// A [rows, cols] tensor on `dev` with unit inner stride; returns the row stride in elements.
int64_t check_matrix(const DLTensor* t, const char* name, int64_t rows, int64_t cols, int ordinal) {
  if (t == nullptr) fail(std::string("apply: NULL ") + name);
  if (t->device.device_type != kDLCUDA || t->device.device_id != ordinal)
    fail(std::string("apply: ") + name + " must be on cuda:" + s(ordinal) + " (the method's device), found device type " +
         s(t->device.device_type) + " id " + s(t->device.device_id));
  if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols)
    fail(std::string("apply: ") + name + " must be [" + s(rows) + ", " + s(cols) + "]" +
         (t->ndim == 2 ? ", found [" + s(t->shape[0]) + ", " + s(t->shape[1]) + "]" : ", found rank " + s(t->ndim)));
  const int64_t inner = t->strides ? t->strides[1] : 1, outer = t->strides ? t->strides[0] : cols;
  if ((inner != 1 && cols > 1) || (outer < cols && rows > 1))
    fail(std::string("apply: ") + name + " needs contiguous rows (strides [>= " + s(cols) + ", 1]), found [" + s(outer) +
         ", " + s(inner) + "]");
  if (t->byte_offset % 16 != 0) fail(std::string("apply: ") + name + " byte_offset must be a multiple of 16");
  return rows > 1 ? outer : cols;
}

template <class T>
T* at(const DLTensor* t) {
  return reinterpret_cast<T*>(static_cast<char*>(t->data) + t->byte_offset);
}

// Inverse of the W8A16 repack of one row-major [rows, K] block (K % 16 == 0): old byte b of a
// 16-byte group sits at new position 4 * ((b & 7) >> 1) + (b >= 8 ? 2 : 0) + (b & 1).
void unrepack(std::vector<uint8_t>& codes) {
  uint8_t tmp[16];
  for (std::size_t g = 0; g + 16 <= codes.size(); g += 16) {
    for (int b = 0; b < 16; ++b) tmp[b] = codes[g + 4 * ((b & 7) >> 1) + (b >= 8 ? 2 : 0) + (b & 1)];
    std::memcpy(codes.data() + g, tmp, 16);
  }
}

std::size_t elem_size(DType d) { return d == DType::BF16 || d == DType::F16 ? 2 : d == DType::F32 ? 4 : 1; }

}  // namespace

gpu::GpuScheme gpu_scheme_of(const CpuExperts& e) {
  gpu::GpuScheme g;
  switch (e.weight_dtype) {
    case DType::F8_E4M3: g.kind = mk::kKindFp8; break;
    case DType::I8: g.kind = mk::kKindW8A16; break;
    case DType::BF16: g.kind = mk::kKindBf16; break;
    default:
      fail(MOEQ_STATUS_CODE_UNIMPLEMENTED, std::string("the CUDA kernels take FP8, I8 or BF16 expert weights, found ") +
                                               dtype_name(e.weight_dtype));
  }
  switch (e.granularity) {
    case Granularity::kNone: g.wscale = mk::kWNone; break;
    case Granularity::kTensor: g.wscale = mk::kWTensor; break;
    case Granularity::kChannel: g.wscale = mk::kWChannel; break;
    case Granularity::kBlock: g.wscale = mk::kWBlock; break;
  }
  switch (e.act) {
    case ActMode::kNone: g.amode = mk::kANone; break;
    case ActMode::kStaticTensor: g.amode = mk::kAStatic; break;
    case ActMode::kDynamicTensor: g.amode = mk::kATensor; break;
    case ActMode::kDynamicToken: g.amode = mk::kAToken; break;
    case ActMode::kDynamicGroup: g.amode = mk::kAGroup; break;
  }
  g.act_group = e.act == ActMode::kDynamicGroup ? static_cast<int>(e.act_group) : 128;
  // One scale period along K must divide every K-period of the scales (weight blocks, possibly
  // refined by TP, and activation groups).
  int64_t period = 128;
  if (e.granularity == Granularity::kBlock) period = std::gcd(period, std::gcd(e.c13_block, e.c2_block));
  if (e.act == ActMode::kDynamicGroup) period = std::gcd(period, e.act_group);
  g.scale_k = static_cast<int>(period);
  if (e.granularity == Granularity::kBlock) g.block_n = static_cast<int>(std::gcd(e.r13_block, e.r2_block));
  return g;
}

gpu::DeviceLimits device_limits(int ordinal) {
  moeq_device_info_args info{};
  info.struct_size = sizeof(info);
  info.device = {kDLCUDA, ordinal};
  sdk::throw_if_error(sdk::host()->device_info(&info));
  gpu::DeviceLimits l;
  if (sdk::host()->abi_minor >= 2) l.arch = std::string(info.arch, strnlen(info.arch, sizeof info.arch));
  l.sm_major = info.sm_major;
  l.sm_minor = info.sm_minor;
  l.multiprocessors = info.multiprocessors;
  l.memory_bytes = info.memory_bytes;
  const cu::Driver& api = cu::driver();
  int dev = 0, smem = 0;
  cu::check(api.cuDeviceGet(&dev, ordinal), "cuDeviceGet");
  cu::check(api.cuDeviceGetAttribute(&smem, kAttrMaxSmemOptin, dev), "cuDeviceGetAttribute");
  l.max_smem_per_block = smem;
  return l;
}

namespace {

// The plan of a layer: the most tokens a pass whose workspace fits the budget (or
// MOEQ_CT_MAX_TOKENS), the buckets and tiles for this device.
std::unique_ptr<gpu::MoePlan> make_plan(const gpu::DeviceLimits& lim, const CpuExperts& layout, int64_t top_k,
                                        const std::string& where) {
  const gpu::GpuScheme scheme = gpu_scheme_of(layout);
  gpu::LayerDims dims;
  dims.num_experts = layout.num_local;
  dims.first_expert = layout.first_local;
  dims.hidden = layout.hidden;
  dims.inter = layout.intermediate;
  dims.top_k = top_k;
  int64_t max_tokens = 8192;
  if (const char* env = std::getenv("MOEQ_CT_MAX_TOKENS")) {
    char* end = nullptr;
    const long long v = std::strtoll(env, &end, 10);
    if (end == env || *end != '\0' || v < 1 || v > 65536)
      fail(where + "MOEQ_CT_MAX_TOKENS must be an integer in [1, 65536], found '" + env + "'");
    max_tokens = v;
  } else {
    while (max_tokens > 16 && gpu::MoePlan(scheme, dims, max_tokens, lim).workspace_bytes() > kWorkspaceBudget)
      max_tokens /= 2;
  }
  try {
    return std::make_unique<gpu::MoePlan>(scheme, dims, max_tokens, lim);
  } catch (const Error& e) {
    fail(e.code(), where + e.what());
  }
}

// Every kernel set of the plan, and the utility set for the int8 repack.
std::vector<gpu::KernelSetSource> kernel_sets(const gpu::MoePlan& plan) {
  std::vector<gpu::KernelSetSource> sets = plan.sources();
  if (plan.scheme().kind == mk::kKindW8A16) sets.push_back(gpu::utility_source());
  return sets;
}

struct Compiled {
  std::vector<cu::Module> modules;
  std::vector<std::string> errors;  // empty strings where a set compiled
  int cache_hits = 0;
  int ptx_sets = 0;
};

// Every set through the host's JIT at once (one thread a set), for the device's exact arch.
Compiled compile_sets(const std::vector<gpu::KernelSetSource>& sets, int ordinal, uint32_t flags) {
  std::vector<std::string> header_names, header_texts;
  for (const auto& h : gpu::jit_headers()) {
    header_names.emplace_back(h.name);
    header_texts.emplace_back(h.text);
  }
  std::vector<const char*> hn, ht;
  for (std::size_t i = 0; i < header_names.size(); ++i) {
    hn.push_back(header_names[i].c_str());
    ht.push_back(header_texts[i].c_str());
  }
  Compiled c;
  c.modules.assign(sets.size(), nullptr);
  c.errors.assign(sets.size(), "");
  std::vector<int> hits(sets.size(), 0), ptx(sets.size(), 0);
  auto compile = [&](std::size_t i) {
    moeq_jit_compile_args j{};
    j.struct_size = sizeof(j);
    j.name = sets[i].name.c_str();
    j.source = sets[i].source.c_str();
    j.header_names = hn.data();
    j.header_contents = ht.data();
    j.num_headers = hn.size();
    j.arch = nullptr;  // the device's exact arch, as the host names it
    j.plugin_name = kPluginName;
    j.plugin_version = kPluginVersion;
    j.device = {kDLCUDA, ordinal};
    j.flags = flags;
    moeq_status* st = sdk::host()->jit_compile(&j);
    if (st != nullptr) {
      c.errors[i] = std::string("compiling ") + sets[i].name + ": " + sdk::host()->status_message(st);
      sdk::host()->status_destroy(st);
      return;
    }
    c.modules[i] = j.module;
    hits[i] = j.cache_hit;
    ptx[i] = j.image_kind == MOEQ_JIT_IMAGE_PTX ? 1 : 0;  // stays 0 from a host that does not write it
  };
  std::vector<std::thread> pool;
  for (std::size_t i = 1; i < sets.size(); ++i) pool.emplace_back(compile, i);
  if (!sets.empty()) compile(0);
  for (auto& t : pool) t.join();
  c.cache_hits = std::accumulate(hits.begin(), hits.end(), 0);
  c.ptx_sets = std::accumulate(ptx.begin(), ptx.end(), 0);
  return c;
}

}  // namespace

void prefetch_kernels(int ordinal, const CpuExperts& layout, int64_t top_k) {
  try {
    const std::unique_ptr<gpu::MoePlan> plan = make_plan(device_limits(ordinal), layout, top_k, "");
    (void)compile_sets(kernel_sets(*plan), ordinal, MOEQ_JIT_COMPILE_ONLY);
  } catch (...) {  // the compile at process_after_loading reports whatever failed here
  }
}

GpuExperts::GpuExperts(int ordinal, const CpuExperts& layout, int64_t top_k, const std::string& layer_name)
    : ordinal_(ordinal), layout_(layout) {
  const gpu::DeviceLimits lim = device_limits(ordinal);
  arch_ = lim.arch;  // the host's name for the device's arch (empty before ABI 1.2); jit_compile picks it
  const std::string where = "layer " + layer_name + " on cuda:" + s(ordinal) + ": ";
  plan_ = make_plan(lim, layout, top_k, where);
  const bool repack = plan_->scheme().kind == mk::kKindW8A16;
  Compiled c = compile_sets(kernel_sets(*plan_), ordinal, 0);
  std::vector<cu::Module>& modules = c.modules;
  for (const std::string& e : c.errors)
    if (!e.empty()) fail(MOEQ_STATUS_CODE_INTERNAL, where + e);
  cache_hits_ = c.cache_hits;
  ptx_sets_ = c.ptx_sets;
  cu::Module utility = repack ? modules.back() : nullptr;
  if (repack) modules.pop_back();
  runner_ = std::make_unique<gpu::MoeRunner>(*plan_, modules);

  if (sdk::host()->abi_minor < 2) {  // the host lends no workspace: the method owns one
    const cu::Driver& api = cu::driver();
    cu::use_device(ordinal);
    cu::check(api.cuMemAlloc(&workspace_, std::max<std::size_t>(plan_->workspace_bytes(), 256)),
              ("cuMemAlloc of the " + s(static_cast<int64_t>(plan_->workspace_bytes())) + "-byte workspace").c_str());
  }
  weights_.w13 = layout.w13;
  weights_.w2 = layout.w2;
  weights_.s13 = layout.s13;
  weights_.s2 = layout.s2;
  if (layout.granularity == Granularity::kBlock) {
    weights_.s13_rows = static_cast<int>(layout.r13_count);
    weights_.s13_cols = static_cast<int>(layout.c13_count);
    weights_.s13_bn = static_cast<int>(layout.r13_block);
    weights_.s13_bk = static_cast<int>(layout.c13_block);
    weights_.s2_rows = static_cast<int>(layout.r2_count);
    weights_.s2_cols = static_cast<int>(layout.c2_count);
    weights_.s2_bn = static_cast<int>(layout.r2_block);
    weights_.s2_bk = static_cast<int>(layout.c2_block);
  }
  weights_.a1_static = layout.a1_static;
  weights_.a2_static = layout.a2_static;
  if (repack) {
    const int64_t E = layout.num_local, H = layout.hidden, I = layout.intermediate;
    cu::OwnStream stream;
    gpu::launch_repack_w8a16(utility, const_cast<void*>(layout.w13), E * 2 * I * H, stream.get());
    gpu::launch_repack_w8a16(utility, const_cast<void*>(layout.w2), E * H * I, stream.get());
    stream.sync("repacking int8 codes");
  }
}

GpuExperts::~GpuExperts() {
  if (workspace_ == 0) return;
  try {
    cu::use_device(ordinal_);
    cu::driver().cuMemFree(workspace_);
  } catch (...) {
  }
}

void GpuExperts::apply(const moeq_apply_args& a) const {
  const int64_t H = layout_.hidden, k = plan_->dims().top_k;
  if (a.x == nullptr || a.x->ndim != 2) fail("apply: x must be a [M, H] tensor");
  const int64_t M = a.x->shape[0];
  if (!is(a.x->dtype, kDLBfloat, 16)) fail("apply: the CUDA kernels take BF16 x, found " + dl_dtype_name(a.x->dtype));
  const int64_t xs = check_matrix(a.x, "x", M, H, ordinal_);
  const int64_t os = check_matrix(a.out, "out", M, H, ordinal_);
  if (a.topk_ids && a.topk_ids->ndim == 2 && a.topk_ids->shape[1] != k)
    fail("apply: topk_ids has " + s(a.topk_ids->shape[1]) + " columns; the layer was prepared for top_k " + s(k));
  const int64_t ids_stride = check_matrix(a.topk_ids, "topk_ids", M, k, ordinal_);
  const int64_t w_stride = check_matrix(a.topk_weights, "topk_weights", M, k, ordinal_);
  if (!is(a.topk_ids->dtype, kDLInt, 32)) fail("apply: topk_ids must be I32, found " + dl_dtype_name(a.topk_ids->dtype));
  if (!is(a.topk_weights->dtype, kDLFloat, 32))
    fail("apply: topk_weights must be F32, found " + dl_dtype_name(a.topk_weights->dtype));
  if (ids_stride != k || w_stride != k) fail("apply: topk_ids and topk_weights must be contiguous [M, top_k]");
  const bool out_bf16 = is(a.out->dtype, kDLBfloat, 16);
  if (!out_bf16 && !is(a.out->dtype, kDLFloat, 32))
    fail("apply: out must be BF16 or F32 on the GPU, found " + dl_dtype_name(a.out->dtype));
  if (M == 0) return;
  gpu::RunIo io;
  io.m = M;
  io.x = at<const void>(a.x);
  io.x_stride = xs;
  io.topk_ids = at<const int32_t>(a.topk_ids);
  io.topk_weights = at<const float>(a.topk_weights);
  io.out = at<void>(a.out);
  io.out_stride = os;
  io.out_dtype = out_bf16 ? mk::kOutBf16 : mk::kOutF32;
  if (workspace_ != 0) {
    runner_->run(io, weights_, reinterpret_cast<void*>(static_cast<uintptr_t>(workspace_)), a.stream);
    return;
  }
  // The host's workspace: passes of as many tokens as its layout fits.
  const sdk::Workspace ws = sdk::workspace_of(a);
  if (ws.bytes != fitted_bytes_) {  // the host lends the same block every time: fitted once
    fitted_ = plan_->workspace_fitting(ws.bytes);
    fitted_bytes_ = ws.bytes;
  }
  const gpu::MoePlan::Workspace& layout = fitted_;
  if (ws.data == nullptr || layout.tokens < 1)
    fail(MOEQ_STATUS_CODE_FAILED_PRECONDITION,
         "apply: the host lent a workspace of " + s(static_cast<int64_t>(ws.bytes)) + " bytes" +
             (ws.data == nullptr ? " at NULL" : "") + "; this layer needs at least " +
             s(static_cast<int64_t>(plan_->workspace_for(1).bytes)) + " (apply_info answers " +
             s(static_cast<int64_t>(plan_->workspace_bytes())) + " for " + s(plan_->max_tokens()) + " tokens a pass)");
  if (reinterpret_cast<uintptr_t>(ws.data) % 256 != 0) fail("apply: the workspace must be 256-byte aligned");
  runner_->run(io, weights_, layout, ws.data, a.stream);
}

void GpuExperts::apply_info(moeq_apply_info_args& a) const {
  const gpu::MoePlan::Workspace w = plan_->workspace_for(a.max_tokens > 0 ? a.max_tokens : plan_->max_tokens());
  a.workspace_bytes = workspace_ != 0 ? 0 : w.bytes;
  a.tokens_per_pass = w.tokens;
  a.x_dtypes = MOEQ_DTYPE_BIT_BF16;
  a.out_dtypes = MOEQ_DTYPE_BIT_BF16 | MOEQ_DTYPE_BIT_F32;
}

void GpuExperts::dequantize(int64_t le, float* w13, float* w2) const {
  const CpuExperts& e = layout_;
  const int64_t H = e.hidden, I = e.intermediate;
  const std::size_t elem = elem_size(e.weight_dtype);
  int64_t n13 = 0, n2 = 0;  // scales of one expert
  switch (e.granularity) {
    case Granularity::kNone: break;
    case Granularity::kTensor: n13 = 2, n2 = 1; break;
    case Granularity::kChannel: n13 = 2 * I, n2 = H; break;
    case Granularity::kBlock: n13 = 2 * e.r13_count * e.c13_count, n2 = e.r2_count * e.c2_count; break;
  }
  std::vector<uint8_t> c13(static_cast<std::size_t>(2 * I * H) * elem), c2(static_cast<std::size_t>(H * I) * elem);
  std::vector<float> s13(static_cast<std::size_t>(n13)), s2(static_cast<std::size_t>(n2));
  auto read = [&](void* dst, const void* base, std::size_t offset, std::size_t bytes) {
    cu::read_device(ordinal_, dst, reinterpret_cast<uintptr_t>(base) + offset, bytes, "reading an expert back");
  };
  read(c13.data(), e.w13, static_cast<std::size_t>(le) * c13.size(), c13.size());
  read(c2.data(), e.w2, static_cast<std::size_t>(le) * c2.size(), c2.size());
  read(s13.data(), e.s13, static_cast<std::size_t>(le * n13) * 4, s13.size() * 4);
  read(s2.data(), e.s2, static_cast<std::size_t>(le * n2) * 4, s2.size() * 4);
  if (e.weight_dtype == DType::I8) {
    unrepack(c13);
    unrepack(c2);
  }
  CpuExperts one = e;
  one.num_local = 1;
  one.w13 = c13.data();
  one.w2 = c2.data();
  one.s13 = s13.empty() ? nullptr : s13.data();
  one.s2 = s2.empty() ? nullptr : s2.data();
  cpu_dequantize(one, 0, w13, w2);
}

std::string GpuExperts::describe() const {
  std::string b;
  for (const auto& bucket : plan_->buckets()) b += (b.empty() ? "" : ", ") + gpu::describe(bucket);
  const std::string ptx = ptx_sets_ > 0 ? ", " + s(ptx_sets_) + " as PTX for the driver (device newer than NVRTC)" : "";
  return "cuda:" + s(ordinal_) + (arch_.empty() ? "" : " " + arch_) + ", " + plan_->scheme().label() + ", " + s(int64_t(plan_->buckets().size())) +
         " kernel sets (" + s(cache_hits_) + " from the JIT cache" + ptx + "), up to " + s(plan_->max_tokens()) +
         " tokens a pass, workspace " + s(static_cast<int64_t>(plan_->workspace_bytes() >> 10)) + " KiB" +
         (plan_->mma_tma_b() ? ", mma.sync weight tiles by TMA" : "") + "; tiles " + b;
}

}  // namespace moeq::ct
