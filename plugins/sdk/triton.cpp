#include <moeq/error.hpp>
#include <moeq/sdk/triton.hpp>

#include <boost/json.hpp>

#include <cstdint>

namespace moeq::sdk::triton {
namespace {

namespace json = boost::json;
constexpr int kAttrMaxDynamicSmem = 8;  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
constexpr int kDefaultSmem = 48 * 1024;

const json::value& field(const json::object& o, const char* name, std::string_view what) {
  const json::value* v = o.if_contains(name);
  if (v == nullptr) fail(std::string(what) + ": Triton metadata has no '" + name + "'");
  return *v;
}

int64_t integer(const json::object& o, const char* name, std::string_view what, bool optional = false,
                int64_t fallback = 0) {
  const json::value* v = o.if_contains(name);
  if (v == nullptr) {
    if (optional) return fallback;
    field(o, name, what);
  }
  if (v->is_null() && optional) return fallback;
  if (!v->is_int64() && !v->is_uint64())
    fail(std::string(what) + ": Triton metadata '" + name + "' must be an integer, found " + json::serialize(*v));
  const int64_t n = v->to_number<int64_t>();
  if (n < 0) fail(std::string(what) + ": Triton metadata '" + name + "' must be >= 0, found " + std::to_string(n));
  return n;
}

std::string text_of(const json::object& o, const char* name, std::string_view what, bool optional = false) {
  const json::value* v = o.if_contains(name);
  if (v == nullptr || v->is_null()) {
    if (optional) return "";
    field(o, name, what);
  }
  if (!v->is_string()) fail(std::string(what) + ": Triton metadata '" + name + "' must be a string");
  return std::string(v->as_string());
}

}  // namespace

Metadata parse_metadata(std::string_view text, std::string_view what) {
  json::value v;
  try {
    v = json::parse(text);
  } catch (const std::exception& e) {
    fail(std::string(what) + ": Triton metadata is not JSON: " + e.what());
  }
  if (!v.is_object()) fail(std::string(what) + ": Triton metadata must be a JSON object");
  const json::object& o = v.as_object();
  Metadata m;
  m.name = text_of(o, "name", what);
  if (m.name.empty()) fail(std::string(what) + ": Triton metadata 'name' is empty");
  m.num_warps = static_cast<int>(integer(o, "num_warps", what));
  if (m.num_warps < 1 || m.num_warps > 32)
    fail(std::string(what) + ": num_warps must be in [1, 32], found " + std::to_string(m.num_warps));
  m.num_ctas = static_cast<int>(integer(o, "num_ctas", what, true, 1));
  m.shared = static_cast<int>(integer(o, "shared", what));
  m.global_scratch_size = static_cast<std::size_t>(integer(o, "global_scratch_size", what, true));
  m.global_scratch_align = static_cast<std::size_t>(integer(o, "global_scratch_align", what, true, 1));
  m.profile_scratch_size = static_cast<std::size_t>(integer(o, "profile_scratch_size", what, true));
  if (const json::value* c = o.if_contains("launch_cooperative_grid"); c && c->is_bool()) m.cooperative = c->as_bool();
  m.triton_version = text_of(o, "triton_version", what, true);
  m.target = text_of(o, "target", what, true);
  // NOTE: Triton appends its scratch pointers from 3.3 (global) and 3.5 (profile); an older
  // metadata file (no profile_scratch_size) had one or none. Our kernels come from 3.5 and later.
  m.scratch_args = o.if_contains("profile_scratch_size") ? 2 : o.if_contains("global_scratch_size") ? 1 : 0;
  if (m.num_ctas != 1)
    fail(std::string(what) + ": kernel '" + m.name + "' asks for " + std::to_string(m.num_ctas) +
         " CTAs a cluster; the launcher takes single-CTA kernels (num_ctas = 1)");
  if (m.cooperative) fail(std::string(what) + ": kernel '" + m.name + "' needs a cooperative grid launch");
  if (m.global_scratch_size > 0 || m.profile_scratch_size > 0)
    fail(std::string(what) + ": kernel '" + m.name + "' needs " + std::to_string(m.global_scratch_size) +
         " bytes of global scratch and " + std::to_string(m.profile_scratch_size) +
         " of profile scratch a program; the launcher passes none");
  return m;
}

Kernel::Kernel(cuda::Module module, Metadata metadata) : meta_(std::move(metadata)) {
  const cuda::Driver& d = cuda::driver();
  cuda::check(d.cuModuleGetFunction(&function_, module, meta_.name.c_str()), ("Triton kernel " + meta_.name).c_str());
  if (meta_.shared > kDefaultSmem)
    cuda::check(d.cuFuncSetAttribute(function_, kAttrMaxDynamicSmem, meta_.shared),
                ("dynamic shared memory of Triton kernel " + meta_.name).c_str());
}

void Kernel::launch(std::array<unsigned, 3> grid, std::initializer_list<void*> args, cuda::Stream stream) const {
  if (function_ == nullptr) fail(MOEQ_STATUS_CODE_FAILED_PRECONDITION, "launch of a Triton kernel that was not loaded");
  if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0) return;  // nothing to run
  std::vector<void*> params(args);
  // Triton's appended scratch pointers: null (parse_metadata refused kernels that need them).
  static void* const null_pointer = nullptr;
  for (int i = 0; i < meta_.scratch_args; ++i) params.push_back(const_cast<void**>(&null_pointer));
  cuda::check(cuda::driver().cuLaunchKernel(function_, grid[0], grid[1], grid[2], threads(), 1, 1,
                                            static_cast<unsigned>(meta_.shared), stream, params.data(), nullptr),
              ("Triton kernel " + meta_.name).c_str());
}

}  // namespace moeq::sdk::triton
