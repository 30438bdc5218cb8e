// moeq plugin SDK: C++ helpers over abi.h. Exceptions stay inside the plugin: every ABI
// trampoline catches them and returns a status made through the host.
#pragma once
#include <moeq/abi.h>
#include <moeq/dtype.hpp>
#include <moeq/error.hpp>

#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace moeq::sdk {

// The host table handed to initialize (NULL before).
const moeq_host_api* host();
void set_host(const moeq_host_api* host);

// Status from the exception in flight (call inside a catch block only through guarded()).
moeq_status* status_from_current_exception() noexcept;

// Runs f; any exception becomes a host status. Never throws.
template <class F>
moeq_status* guarded(F&& f) noexcept {
  try {
    f();
    return nullptr;
  } catch (...) {
    return status_from_current_exception();
  }
}

// Throws moeq::Error carrying the status' code and message, and frees the status.
void throw_if_error(moeq_status* status);

// Writes s into a host buffer, truncating, always NUL-terminated when capacity > 0.
void write_cstr(char* buffer, std::size_t capacity, std::string_view s);

std::string shape_string(const std::vector<int64_t>& shape);

// "w1 (gate_proj)", "w2 (down_proj)", "w3 (up_proj)" for a moeq_projection value, "?" otherwise:
// how plugins name the piece of an expert a message is about.
const char* projection_name(int32_t projection);

// A non-owning strided view that owns its shape/stride arrays, so narrowing is cheap and the
// DLTensor it hands out stays valid while the view lives.
class View {
 public:
  explicit View(const DLTensor& t);
  View(const View& other);
  View& operator=(const View& other);
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t size(int dim) const { return shape_.at(static_cast<std::size_t>(dim)); }
  const std::vector<int64_t>& shape() const { return shape_; }
  DType dtype() const { return dtype_; }
  int64_t numel() const;
  View narrow(int dim, int64_t start, int64_t length) const;
  // Reinterpret a view whose trailing dims are given, e.g. [N] as [N, 1] (contiguous only).
  View reshaped(std::vector<int64_t> shape) const;
  const DLTensor* dl() const { return &tensor_; }
  // Element at a flat row-major index of the view, as float.
  float at(int64_t flat_index) const;
  // Every element, row-major, as float into out[numel()]: row by row along the last dim, with
  // tight loops for BF16 and F32 (what `at` per element costs ten times over).
  void read_floats(float* out) const;
  // The row-major flat index of the first NaN or infinite element, or -1 when there is none
  // (F8_E4M3 codes 0x7f/0xff, BF16/F16/F32 all-ones exponents; integer dtypes: -1). Host
  // memory only (Error for a device view).
  int64_t find_non_finite() const;

 private:
  void sync();
  DLTensor tensor_{};
  std::vector<int64_t> shape_;
  std::vector<int64_t> strides_;
  DType dtype_ = DType::F32;
};

// One layer's host services, bound to the layer handle.
class Layer {
 public:
  explicit Layer(moeq_layer* handle) : handle_(handle) {}
  moeq_layer* handle() const { return handle_; }
  const DLTensor* create_param(const char* name, std::vector<int64_t> shape, DType dtype) const;
  void copy(const DLTensor* param, std::vector<int64_t> dst_offset, const View& source,
            uint32_t flags = 0) const;
  void fill(const DLTensor* param, std::vector<int64_t> dst_offset, std::vector<int64_t> extent,
            double value, const char* reason) const;

 private:
  moeq_layer* handle_;
};

// What a plugin's per-layer method implements; the SDK turns it into ABI slots.
class Method {
 public:
  virtual ~Method() = default;
  virtual void create_weights(const Layer& layer) = 0;
  // Returns false and sets skip_reason when the tensor is deliberately not used.
  virtual bool load(const moeq_weight_loader_args& args, const Layer& layer,
                    std::string& skip_reason) = 0;
  virtual void process_after_loading(const Layer& layer) = 0;
  virtual void apply(const moeq_apply_args& args) = 0;
  virtual std::string describe() const { return "{}"; }
  virtual void dequantize_expert(moeq_dequantize_expert_args& args) const;
  // ABI 1.2: what apply takes. The default: no workspace, x and out F32, BF16 or F16, any
  // batch in one pass (tokens_per_pass = max_tokens, or INT64_MAX when 0).
  virtual void apply_info(moeq_apply_info_args& args) const;
};

// The workspace the host lent to this apply (ABI 1.2), or {nullptr, 0} when the host is older
// or lent none.
struct Workspace {
  void* data = nullptr;
  std::size_t bytes = 0;
};
Workspace workspace_of(const moeq_apply_args& args);

// A method that runs as a method of another plugin (delegation through host->method_create):
// create_weights, process_after_loading, apply and dequantize_expert forward as they are;
// load() hands a (possibly normalized) tensor on with forward_load().
class DelegatingMethod : public Method {
 public:
  // Creates `plugin_name`'s method from `args` with the config JSON and weight dtype replaced.
  DelegatingMethod(const moeq_method_create_args& args, const char* plugin_name, const std::string& config_json,
                   const char* weight_dtype);
  ~DelegatingMethod() override;
  void create_weights(const Layer& layer) override;
  void process_after_loading(const Layer& layer) override;
  void apply(const moeq_apply_args& args) override;
  void dequantize_expert(moeq_dequantize_expert_args& args) const override;
  // The delegate's answer (its default when its plugin has no apply_info).
  void apply_info(moeq_apply_info_args& args) const override;

 protected:
  // Passes `in` on with another source view and suffix; returns false (with the delegate's
  // reason) when the delegate skipped it.
  bool forward_load(const moeq_weight_loader_args& in, const DLTensor* source, const char* suffix,
                    std::string& skip_reason);
  // The delegate's describe JSON, or "" when it has none.
  std::string delegate_describe() const;

 private:
  const moeq_plugin_api* api_ = nullptr;
  moeq_method* method_ = nullptr;
};

// A plugin class P provides:
//   static int32_t probe(const moeq_probe_args& args, std::string& reason);
//   static std::unique_ptr<Method> create(const moeq_method_create_args& args);
// and PluginApi<P>::table() is its function table.
Method& method_of(moeq_method* method);
moeq_method* wrap_method(std::unique_ptr<Method> method);
void destroy_method(moeq_method* method) noexcept;

moeq_status* initialize_trampoline(moeq_initialize_args* args) noexcept;
moeq_status* create_weights_trampoline(moeq_create_weights_args* args) noexcept;
moeq_status* weight_loader_trampoline(moeq_weight_loader_args* args) noexcept;
moeq_status* process_trampoline(moeq_process_after_loading_args* args) noexcept;
moeq_status* apply_trampoline(moeq_apply_args* args) noexcept;
moeq_status* describe_trampoline(moeq_describe_args* args) noexcept;
moeq_status* dequantize_trampoline(moeq_dequantize_expert_args* args) noexcept;
moeq_status* apply_info_trampoline(moeq_apply_info_args* args) noexcept;

// abi.h: NULL arguments, or a struct_size below the v1.0 size (`v10_size`), are
// INVALID_ARGUMENT naming the call.
void check_args(const void* args, std::size_t struct_size, std::size_t v10_size, const char* call);
// A geometry no layer can have (counts below 1, ranks outside their sizes, local experts past
// the global count, I not split evenly, top_k outside [1, E]) is INVALID_ARGUMENT naming it.
void check_geometry(const moeq_layer_geometry& g);
#define MOEQ_SDK_CHECK_ARGS(args, type, last_v10_field, call) \
  ::moeq::sdk::check_args((args), (args) ? (args)->struct_size : 0, MOEQ_STRUCT_SIZE(type, last_v10_field), (call))

template <class P>
struct PluginApi {
  static moeq_status* probe(moeq_probe_args* args) noexcept {
    return guarded([&] {
      MOEQ_SDK_CHECK_ARGS(args, moeq_probe_args, reason_capacity, "probe");
      std::string reason;
      args->score = P::probe(*args, reason);
      write_cstr(args->reason, args->reason_capacity, reason);
    });
  }
  static moeq_status* method_create(moeq_method_create_args* args) noexcept {
    return guarded([&] {
      MOEQ_SDK_CHECK_ARGS(args, moeq_method_create_args, method, "method_create");
      MOEQ_SDK_CHECK_ARGS(args->geometry, moeq_layer_geometry, activation, "method_create (geometry)");
      check_geometry(*args->geometry);
      args->method = wrap_method(P::create(*args));
    });
  }
  static const moeq_plugin_api* table() {
    static const moeq_plugin_api api = {
        sizeof(moeq_plugin_api), &initialize_trampoline, nullptr, &probe, &method_create,
        &destroy_method,         &create_weights_trampoline,      &weight_loader_trampoline,
        &process_trampoline,     &apply_trampoline,               &describe_trampoline,
        &dequantize_trampoline,  &apply_info_trampoline};
    return &api;
  }
};

// Minimal JSON-free helpers shared by plugins.
bool glob_match(std::string_view pattern, std::string_view text);  // fnmatch-style * ? only

}  // namespace moeq::sdk

// Defines the one exported entry symbol.
#define MOEQ_SDK_EXPORT_DESCRIPTOR(descriptor_expr)                                  \
  extern "C" __attribute__((visibility("default"))) const moeq_plugin_descriptor*    \
  moeq_plugin_get_descriptor(void) {                                               \
    return (descriptor_expr);                                                      \
  }
