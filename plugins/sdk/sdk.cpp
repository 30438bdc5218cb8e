#include <moeq/sdk/sdk.hpp>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <new>
#include <sstream>

// The opaque method handle of every SDK-built plugin. Each plugin .so has its own copy with
// hidden visibility; a handle is only ever dereferenced by the plugin that made it.
struct moeq_method {
  std::unique_ptr<moeq::sdk::Method> impl;
};

namespace moeq::sdk {
namespace {
std::atomic<const moeq_host_api*> g_host{nullptr};

moeq_status* make_status(moeq_status_code code, const std::string& message) noexcept {
  const moeq_host_api* h = host();
  if (h == nullptr) return nullptr;  // cannot report without a host; initialize comes first
  return h->status_create(code, message.c_str());
}
}  // namespace

const moeq_host_api* host() { return g_host.load(); }
void set_host(const moeq_host_api* h) { g_host.store(h); }

moeq_status* status_from_current_exception() noexcept {
  try {
    throw;
  } catch (const moeq::Error& e) {
    return make_status(e.code(), e.what());
  } catch (const std::bad_alloc&) {
    return make_status(MOEQ_STATUS_CODE_OUT_OF_MEMORY, "out of host memory");
  } catch (const std::exception& e) {
    return make_status(MOEQ_STATUS_CODE_INTERNAL, std::string("unexpected exception: ") + e.what());
  } catch (...) {
    return make_status(MOEQ_STATUS_CODE_INTERNAL, "unexpected non-standard exception");
  }
}

void throw_if_error(moeq_status* status) {
  if (status == nullptr) return;
  const moeq_host_api* h = host();
  moeq_status_code code = h->status_code(status);
  std::string message = h->status_message(status);
  h->status_destroy(status);
  throw moeq::Error(code, std::move(message));
}

void write_cstr(char* buffer, std::size_t capacity, std::string_view s) {
  if (buffer == nullptr || capacity == 0) return;
  std::size_t n = std::min(capacity - 1, s.size());
  std::memcpy(buffer, s.data(), n);
  buffer[n] = '\0';
}

const char* projection_name(int32_t projection) {
  switch (projection) {
    case MOEQ_PROJECTION_W1: return "w1 (gate_proj)";
    case MOEQ_PROJECTION_W2: return "w2 (down_proj)";
    case MOEQ_PROJECTION_W3: return "w3 (up_proj)";
  }
  return "?";
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << '[';
  for (std::size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

// ------------------------------------------------------------------------------- View
View::View(const DLTensor& t) : tensor_(t) {
  auto dt = from_dl(t.dtype);
  if (!dt) fail("tensor of an unsupported DLPack dtype");
  dtype_ = *dt;
  if (t.ndim < 0 || t.ndim > 8) fail("tensor rank out of range");
  shape_.assign(t.shape, t.shape + t.ndim);
  if (t.strides != nullptr) {
    strides_.assign(t.strides, t.strides + t.ndim);
  } else {
    strides_.assign(static_cast<std::size_t>(t.ndim), 1);
    for (int d = t.ndim - 2; d >= 0; --d) strides_[d] = strides_[d + 1] * shape_[d + 1];
  }
  sync();
}
View::View(const View& o) : tensor_(o.tensor_), shape_(o.shape_), strides_(o.strides_), dtype_(o.dtype_) {
  sync();
}
View& View::operator=(const View& o) {
  tensor_ = o.tensor_;
  shape_ = o.shape_;
  strides_ = o.strides_;
  dtype_ = o.dtype_;
  sync();
  return *this;
}
void View::sync() {
  tensor_.ndim = static_cast<int32_t>(shape_.size());
  tensor_.shape = shape_.data();
  tensor_.strides = strides_.data();
}
int64_t View::numel() const {
  int64_t n = 1;
  for (int64_t s : shape_) n *= s;
  return n;
}
View View::narrow(int dim, int64_t start, int64_t length) const {
  if (dim < 0 || dim >= ndim() || start < 0 || length < 0 || start + length > shape_[dim])
    fail("narrow out of range: dim " + std::to_string(dim) + " [" + std::to_string(start) + ", " +
         std::to_string(start + length) + ") of " + shape_string(shape_));
  View v(*this);
  v.tensor_.byte_offset += static_cast<uint64_t>(start * strides_[dim]) * dtype_size(dtype_);
  v.shape_[dim] = length;
  v.sync();
  return v;
}
View View::reshaped(std::vector<int64_t> shape) const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  if (n != numel()) fail("reshape " + shape_string(shape_) + " to " + shape_string(shape));
  int64_t expect = 1;
  for (int d = ndim() - 1; d >= 0; --d) {
    if (shape_[d] != 1 && strides_[d] != expect) fail("reshape of a non-contiguous view");
    expect *= shape_[d];
  }
  View v(*this);
  v.shape_ = std::move(shape);
  v.strides_.assign(v.shape_.size(), 1);
  for (int d = static_cast<int>(v.shape_.size()) - 2; d >= 0; --d)
    v.strides_[d] = v.strides_[d + 1] * v.shape_[d + 1];
  v.sync();
  return v;
}
float View::at(int64_t flat) const {
  int64_t offset = 0;
  for (int d = ndim() - 1; d >= 0; --d) {
    int64_t i = flat % shape_[d];
    flat /= shape_[d];
    offset += i * strides_[d];
  }
  const auto* base = static_cast<const std::byte*>(tensor_.data) + tensor_.byte_offset;
  return load_as_float(base, dtype_, static_cast<std::size_t>(offset));
}

namespace {

// fn(r, offset) for each row r of a view along its last dim (offset: of the row's first element,
// in elements); stops when fn returns false.
template <class Fn>
void each_row(const std::vector<int64_t>& shape, const std::vector<int64_t>& strides, Fn&& fn) {
  const int nd = static_cast<int>(shape.size());
  int64_t rows = 1;
  for (int d = 0; d + 1 < nd; ++d) rows *= shape[d];
  std::vector<int64_t> idx(static_cast<std::size_t>(nd - 1), 0);
  for (int64_t r = 0; r < rows; ++r) {
    int64_t off = 0;
    for (int d = 0; d + 1 < nd; ++d) off += idx[d] * strides[d];
    if (!fn(r, off)) return;
    for (int d = nd - 2; d >= 0; --d) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
}

}  // namespace

void View::read_floats(float* out) const {
  const int nd = ndim();
  const auto* base = static_cast<const std::byte*>(tensor_.data) + tensor_.byte_offset;
  if (nd == 0) {
    out[0] = load_as_float(base, dtype_, 0);
    return;
  }
  const int64_t len = shape_[nd - 1], step = strides_[nd - 1];
  if (len == 0) return;
  each_row(shape_, strides_, [&](int64_t r, int64_t off) {
    float* o = out + r * len;
    // Byte copies, not typed loads: a safetensors data offset need not be aligned to the dtype.
    if (dtype_ == DType::BF16) {
      const std::byte* p = base + off * 2;
      for (int64_t j = 0; j < len; ++j) {
        uint16_t h;
        std::memcpy(&h, p + j * step * 2, sizeof h);
        const uint32_t bits = static_cast<uint32_t>(h) << 16;
        std::memcpy(o + j, &bits, sizeof bits);
      }
    } else if (dtype_ == DType::F32) {
      const std::byte* p = base + off * 4;
      for (int64_t j = 0; j < len; ++j) std::memcpy(o + j, p + j * step * 4, sizeof(float));
    } else {
      for (int64_t j = 0; j < len; ++j) o[j] = load_as_float(base, dtype_, static_cast<std::size_t>(off + j * step));
    }
    return true;
  });
}

int64_t View::find_non_finite() const {
  if (tensor_.device.device_type != kDLCPU && tensor_.device.device_type != kDLCUDAHost)
    fail("find_non_finite reads host memory; this view is on device type " +
         std::to_string(static_cast<int>(tensor_.device.device_type)));
  const auto* base = static_cast<const std::byte*>(tensor_.data) + tensor_.byte_offset;
  const int64_t elem = static_cast<int64_t>(dtype_size(dtype_));
  const int nd = ndim();
  if (nd == 0) return first_non_finite(base, 1, dtype_);
  const int64_t len = shape_[nd - 1], step = strides_[nd - 1];
  int64_t found = -1;
  if (len == 0) return found;
  if (nd == 2 && step != 1 && strides_[0] == 1) {
    // A transposed view (Llama-4's [E, H, 2I] pieces): its columns are contiguous. Scan each
    // column in one pass and keep the bad element that comes first in row-major order.
    const int64_t rows = shape_[0];
    for (int64_t c = 0; c < len; ++c) {
      const int64_t r = first_non_finite(base + c * step * elem, static_cast<std::size_t>(rows), dtype_);
      if (r >= 0 && (found < 0 || r * len + c < found)) found = r * len + c;
    }
    return found;
  }
  each_row(shape_, strides_, [&](int64_t r, int64_t off) {
    const std::byte* row = base + off * elem;
    if (step == 1) {
      if (const int64_t j = first_non_finite(row, static_cast<std::size_t>(len), dtype_); j >= 0) found = r * len + j;
    } else {
      for (int64_t j = 0; j < len && found < 0; ++j)
        if (first_non_finite(row + j * step * elem, 1, dtype_) == 0) found = r * len + j;
    }
    return found < 0;
  });
  return found;
}

// ------------------------------------------------------------------------------ Layer
const DLTensor* Layer::create_param(const char* name, std::vector<int64_t> shape, DType dtype) const {
  moeq_param_create_args a{};
  a.struct_size = sizeof(a);
  a.layer = handle_;
  a.name = name;
  a.ndim = static_cast<int32_t>(shape.size());
  a.shape = shape.data();
  a.dtype = to_dl(dtype);
  throw_if_error(host()->param_create(&a));
  return a.tensor;
}
void Layer::copy(const DLTensor* param, std::vector<int64_t> dst_offset, const View& source,
                 uint32_t flags) const {
  moeq_copy_to_param_args a{};
  a.struct_size = sizeof(a);
  a.layer = handle_;
  a.param = param;
  a.dst_offset = dst_offset.data();
  a.source = source.dl();
  a.flags = flags;
  throw_if_error(host()->copy_to_param(&a));
}
void Layer::fill(const DLTensor* param, std::vector<int64_t> dst_offset, std::vector<int64_t> extent,
                 double value, const char* reason) const {
  moeq_param_fill_args a{};
  a.struct_size = sizeof(a);
  a.layer = handle_;
  a.param = param;
  a.dst_offset = dst_offset.data();
  a.extent = extent.data();
  a.value = value;
  a.reason = reason;
  throw_if_error(host()->param_fill(&a));
}

void Method::dequantize_expert(moeq_dequantize_expert_args&) const {
  fail(MOEQ_STATUS_CODE_UNIMPLEMENTED, "this method does not expose dequantized weights");
}
void Method::apply_info(moeq_apply_info_args& a) const {
  a.workspace_bytes = 0;
  a.tokens_per_pass = a.max_tokens > 0 ? a.max_tokens : INT64_MAX;
  a.x_dtypes = a.out_dtypes = MOEQ_DTYPE_BIT_F32 | MOEQ_DTYPE_BIT_BF16 | MOEQ_DTYPE_BIT_F16;
}
Workspace workspace_of(const moeq_apply_args& a) {
  if (a.struct_size < MOEQ_STRUCT_SIZE(moeq_apply_args, workspace_bytes) || host()->abi_minor < 2) return {};
  return {a.workspace, a.workspace_bytes};
}

// ------------------------------------------------------------------- DelegatingMethod
DelegatingMethod::DelegatingMethod(const moeq_method_create_args& args, const char* plugin_name,
                                   const std::string& config_json, const char* weight_dtype) {
  moeq_method_create_args ca = args;
  ca.quant_config_json = config_json.c_str();
  if (weight_dtype != nullptr) ca.weight_dtype = weight_dtype;
  moeq_host_method_create_args h{};
  h.struct_size = sizeof(h);
  h.plugin_name = plugin_name;
  h.create_args = &ca;
  throw_if_error(host()->method_create(&h));
  api_ = h.api;
  method_ = ca.method;
}
DelegatingMethod::~DelegatingMethod() {
  if (api_ != nullptr && method_ != nullptr) api_->method_destroy(method_);
}
void DelegatingMethod::create_weights(const Layer& layer) {
  moeq_create_weights_args a{sizeof(a), method_, layer.handle()};
  throw_if_error(api_->create_weights(&a));
}
void DelegatingMethod::process_after_loading(const Layer& layer) {
  moeq_process_after_loading_args a{sizeof(a), method_, layer.handle()};
  throw_if_error(api_->process_after_loading(&a));
}
void DelegatingMethod::apply(const moeq_apply_args& in) {
  // As many bytes as the host filled (a 1.1 host's struct ends before the workspace).
  moeq_apply_args a{};
  std::memcpy(&a, &in, std::min(in.struct_size, sizeof a));
  a.method = method_;
  throw_if_error(api_->apply(&a));
}
void DelegatingMethod::apply_info(moeq_apply_info_args& in) const {
  if (api_->struct_size < MOEQ_STRUCT_SIZE(moeq_plugin_api, apply_info) || !api_->apply_info) return Method::apply_info(in);
  moeq_apply_info_args a = in;
  a.method = method_;
  throw_if_error(api_->apply_info(&a));
  in.workspace_bytes = a.workspace_bytes;
  in.tokens_per_pass = a.tokens_per_pass;
  in.x_dtypes = a.x_dtypes;
  in.out_dtypes = a.out_dtypes;
}
void DelegatingMethod::dequantize_expert(moeq_dequantize_expert_args& in) const {
  if (api_->struct_size < MOEQ_STRUCT_SIZE(moeq_plugin_api, dequantize_expert) || !api_->dequantize_expert)
    fail(MOEQ_STATUS_CODE_UNIMPLEMENTED, "the delegate exposes no dequantized weights");
  moeq_dequantize_expert_args a = in;
  a.method = method_;
  throw_if_error(api_->dequantize_expert(&a));
  in.a1_quant = a.a1_quant;
  in.a2_quant = a.a2_quant;
  in.group_size = a.group_size;
  in.a1_static_scale = a.a1_static_scale;
  in.a2_static_scale = a.a2_static_scale;
}
bool DelegatingMethod::forward_load(const moeq_weight_loader_args& in, const DLTensor* source, const char* suffix,
                                    std::string& skip_reason) {
  char reason[512] = {0};
  moeq_weight_loader_args a = in;
  a.method = method_;
  a.source = source;
  a.suffix = suffix;
  a.skipped = 0;
  a.skip_reason = reason;
  a.skip_reason_capacity = sizeof(reason);
  throw_if_error(api_->weight_loader(&a));
  if (a.skipped) skip_reason = reason[0] ? reason : "skipped by the delegate";
  return a.skipped == 0;
}
std::string DelegatingMethod::delegate_describe() const {
  if (api_->struct_size < MOEQ_STRUCT_SIZE(moeq_plugin_api, describe) || !api_->describe) return "";
  std::string buf(8192, '\0');
  moeq_describe_args d{sizeof(d), method_, buf.data(), buf.size()};
  throw_if_error(api_->describe(&d));
  return buf.c_str();
}

// ------------------------------------------------------------------------ trampolines
void check_args(const void* args, std::size_t struct_size, std::size_t v10_size, const char* call) {
  if (args == nullptr) fail(MOEQ_STATUS_CODE_INVALID_ARGUMENT, std::string(call) + ": NULL arguments");
  if (struct_size < v10_size)
    fail(MOEQ_STATUS_CODE_INVALID_ARGUMENT, std::string(call) + ": struct_size " + std::to_string(struct_size) +
                                                " is below the v1.0 size " + std::to_string(v10_size));
}

void check_geometry(const moeq_layer_geometry& g) {
  auto bad = [](const std::string& what) {
    fail(MOEQ_STATUS_CODE_INVALID_ARGUMENT, "method_create: geometry " + what);
  };
  auto n = [](int64_t v) { return std::to_string(v); };
  if (g.num_experts < 1 || g.hidden_size < 1 || g.intermediate_size < 1 || g.intermediate_size_per_partition < 1)
    bad("counts must be >= 1, found num_experts " + n(g.num_experts) + ", hidden_size " + n(g.hidden_size) +
        ", intermediate_size " + n(g.intermediate_size) + ", per partition " + n(g.intermediate_size_per_partition));
  if (g.tp_size < 1 || g.tp_rank < 0 || g.tp_rank >= g.tp_size)
    bad("tp_rank " + n(g.tp_rank) + " of tp_size " + n(g.tp_size) + " is out of range");
  if (g.ep_size < 1 || g.ep_rank < 0 || g.ep_rank >= g.ep_size)
    bad("ep_rank " + n(g.ep_rank) + " of ep_size " + n(g.ep_size) + " is out of range");
  if (g.intermediate_size % g.tp_size != 0 || g.intermediate_size / g.tp_size != g.intermediate_size_per_partition)
    bad("intermediate_size_per_partition " + n(g.intermediate_size_per_partition) + " x tp_size " + n(g.tp_size) +
        " is not intermediate_size " + n(g.intermediate_size));
  if (g.num_local_experts < 0 || g.first_local_expert < 0 || g.num_local_experts > g.num_experts ||
      g.first_local_expert > g.num_experts - g.num_local_experts)
    bad("local experts [" + n(g.first_local_expert) + ", +" + n(g.num_local_experts) + ") are not within the " +
        n(g.num_experts) + " experts");
  if (g.top_k < 1 || g.top_k > g.num_experts) bad("top_k " + n(g.top_k) + " is outside [1, " + n(g.num_experts) + "]");
}

Method& method_of(moeq_method* m) {
  if (m == nullptr || !m->impl) fail(MOEQ_STATUS_CODE_INVALID_ARGUMENT, "NULL method");
  return *m->impl;
}
moeq_method* wrap_method(std::unique_ptr<Method> method) {
  auto* m = new moeq_method;
  m->impl = std::move(method);
  return m;
}
void destroy_method(moeq_method* m) noexcept { delete m; }

moeq_status* initialize_trampoline(moeq_initialize_args* args) noexcept {
  if (args == nullptr || args->host == nullptr) return nullptr;
  set_host(args->host);
  return nullptr;
}
moeq_status* create_weights_trampoline(moeq_create_weights_args* a) noexcept {
  return guarded([&] {
    MOEQ_SDK_CHECK_ARGS(a, moeq_create_weights_args, layer, "create_weights");
    method_of(a->method).create_weights(Layer(a->layer));
  });
}
moeq_status* weight_loader_trampoline(moeq_weight_loader_args* a) noexcept {
  return guarded([&] {
    MOEQ_SDK_CHECK_ARGS(a, moeq_weight_loader_args, skip_reason_capacity, "weight_loader");
    if (a->source == nullptr || a->tensor_name == nullptr || a->suffix == nullptr)
      fail(MOEQ_STATUS_CODE_INVALID_ARGUMENT, "weight_loader: NULL source, tensor_name or suffix");
    std::string reason;
    bool used = method_of(a->method).load(*a, Layer(a->layer), reason);
    a->skipped = used ? 0 : 1;
    if (!used) write_cstr(a->skip_reason, a->skip_reason_capacity, reason);
  });
}
moeq_status* process_trampoline(moeq_process_after_loading_args* a) noexcept {
  return guarded([&] {
    MOEQ_SDK_CHECK_ARGS(a, moeq_process_after_loading_args, layer, "process_after_loading");
    method_of(a->method).process_after_loading(Layer(a->layer));
  });
}
moeq_status* apply_trampoline(moeq_apply_args* a) noexcept {
  return guarded([&] {
    MOEQ_SDK_CHECK_ARGS(a, moeq_apply_args, stream, "apply");
    method_of(a->method).apply(*a);
  });
}
moeq_status* describe_trampoline(moeq_describe_args* a) noexcept {
  return guarded([&] {
    MOEQ_SDK_CHECK_ARGS(a, moeq_describe_args, json_capacity, "describe");
    write_cstr(a->json, a->json_capacity, method_of(a->method).describe());
  });
}
moeq_status* dequantize_trampoline(moeq_dequantize_expert_args* a) noexcept {
  return guarded([&] {
    MOEQ_SDK_CHECK_ARGS(a, moeq_dequantize_expert_args, a2_static_scale, "dequantize_expert");
    method_of(a->method).dequantize_expert(*a);
  });
}
moeq_status* apply_info_trampoline(moeq_apply_info_args* a) noexcept {
  return guarded([&] {
    MOEQ_SDK_CHECK_ARGS(a, moeq_apply_info_args, out_dtypes, "apply_info");
    if (a->max_tokens < 0) fail("apply_info: max_tokens must be >= 0, found " + std::to_string(a->max_tokens));
    method_of(a->method).apply_info(*a);
  });
}

bool glob_match(std::string_view p, std::string_view t) {
  std::size_t pi = 0, ti = 0, star = std::string_view::npos, mark = 0;
  while (ti < t.size()) {
    if (pi < p.size() && (p[pi] == '?' || p[pi] == t[ti])) {
      ++pi;
      ++ti;
    } else if (pi < p.size() && p[pi] == '*') {
      star = pi++;
      mark = ti;
    } else if (star != std::string_view::npos) {
      pi = star + 1;
      ti = ++mark;
    } else {
      return false;
    }
  }
  while (pi < p.size() && p[pi] == '*') ++pi;
  return pi == p.size();
}

}  // namespace moeq::sdk
