// The ABI's layout: the C compiler (abi_layout.c) and the C++ compiler agree on every struct,
// the LP64 sizes hold, struct_size comes first, and MOEQ_STRUCT_SIZE names the real last field.
#include <moeq/abi.h>

#include <doctest/doctest.h>

#include <cstddef>
#include <string>

extern "C" {
size_t moeq_test_c_sizeof(const char* type);
size_t moeq_test_c_struct_size(const char* type);
size_t moeq_test_c_offsetof(const char* type, const char* field);
size_t moeq_test_c_field_size(const char* type, const char* field);
size_t moeq_test_c_row_count(void);
size_t moeq_test_c_struct_count(void);
}

namespace {

struct StructLayout {
  const char* type;
  const char* last_field;
  size_t cxx_sizeof;
  size_t cxx_struct_size;  // MOEQ_STRUCT_SIZE(type, last_field)
  size_t cxx_align;
  size_t cxx_struct_size_offset;
  size_t lp64_sizeof;
  size_t lp64_struct_size;
};

#define MOEQ_TEST_STRUCT(T, last, lp64_size, lp64_struct_size)                                  \
  StructLayout{#T, #last, sizeof(T), MOEQ_STRUCT_SIZE(T, last), alignof(T), offsetof(T, struct_size), \
               lp64_size, lp64_struct_size}

// LP64 sizes as the declarations give them (and abi.h's comments say): 6 x int64 + 6 x int32
// after struct_size is 80; 12 slots after struct_size is 104 (apply_info appended in 1.2); the
// descriptor's 13 fields pack to 96.
const StructLayout kStructs[] = {
    MOEQ_TEST_STRUCT(moeq_layer_geometry, activation, 80, 80),
    MOEQ_TEST_STRUCT(moeq_device_info_args, arch, 56, 56),
    MOEQ_TEST_STRUCT(moeq_param_create_args, tensor, 56, 56),
    MOEQ_TEST_STRUCT(moeq_copy_to_param_args, flags, 48, 44),
    MOEQ_TEST_STRUCT(moeq_param_fill_args, reason, 56, 56),
    MOEQ_TEST_STRUCT(moeq_jit_compile_args, image_kind, 136, 132),
    MOEQ_TEST_STRUCT(moeq_host_method_create_args, api, 32, 32),
    MOEQ_TEST_STRUCT(moeq_host_api, scratch_release, 120, 120),
    MOEQ_TEST_STRUCT(moeq_initialize_args, host, 16, 16),
    MOEQ_TEST_STRUCT(moeq_probe_args, reason_capacity, 64, 64),
    MOEQ_TEST_STRUCT(moeq_method_create_args, method, 56, 56),
    MOEQ_TEST_STRUCT(moeq_create_weights_args, layer, 24, 24),
    MOEQ_TEST_STRUCT(moeq_weight_loader_args, skip_reason_capacity, 96, 96),
    MOEQ_TEST_STRUCT(moeq_process_after_loading_args, layer, 24, 24),
    MOEQ_TEST_STRUCT(moeq_apply_args, workspace_bytes, 72, 72),
    MOEQ_TEST_STRUCT(moeq_describe_args, json_capacity, 32, 32),
    MOEQ_TEST_STRUCT(moeq_dequantize_expert_args, a2_static_scale, 64, 64),
    MOEQ_TEST_STRUCT(moeq_plugin_api, apply_info, 104, 104),
    MOEQ_TEST_STRUCT(moeq_plugin_descriptor, api, 96, 96),
    MOEQ_TEST_STRUCT(moeq_scratch_args, data, 40, 40),
    MOEQ_TEST_STRUCT(moeq_apply_info_args, out_dtypes, 48, 48),
};

struct FieldLayout {
  const char* type;
  const char* field;
  size_t cxx_offset;
  size_t cxx_size;
  size_t lp64_offset;
};

#define MOEQ_TEST_FIELD(T, f, lp64_offset) \
  FieldLayout{#T, #f, offsetof(T, f), sizeof(((T*)nullptr)->f), lp64_offset}

// Fields abi_layout.c lists (each must be there, or the C lookup answers (size_t)-1).
const FieldLayout kFields[] = {
    MOEQ_TEST_FIELD(moeq_layer_geometry, num_experts, 8),
    MOEQ_TEST_FIELD(moeq_layer_geometry, intermediate_size_per_partition, 48),
    MOEQ_TEST_FIELD(moeq_layer_geometry, tp_rank, 56),
    MOEQ_TEST_FIELD(moeq_layer_geometry, top_k, 72),
    MOEQ_TEST_FIELD(moeq_layer_geometry, activation, 76),
    MOEQ_TEST_FIELD(moeq_device_info_args, device, 8),
    MOEQ_TEST_FIELD(moeq_device_info_args, available, 16),
    MOEQ_TEST_FIELD(moeq_device_info_args, memory_bytes, 32),
    MOEQ_TEST_FIELD(moeq_device_info_args, arch, 40),
    MOEQ_TEST_FIELD(moeq_param_create_args, ndim, 24),
    MOEQ_TEST_FIELD(moeq_param_create_args, shape, 32),
    MOEQ_TEST_FIELD(moeq_param_create_args, dtype, 40),
    MOEQ_TEST_FIELD(moeq_copy_to_param_args, source, 32),
    MOEQ_TEST_FIELD(moeq_copy_to_param_args, flags, 40),
    MOEQ_TEST_FIELD(moeq_param_fill_args, value, 40),
    MOEQ_TEST_FIELD(moeq_jit_compile_args, num_options, 32),
    MOEQ_TEST_FIELD(moeq_jit_compile_args, module, 40),
    MOEQ_TEST_FIELD(moeq_jit_compile_args, header_names, 48),
    MOEQ_TEST_FIELD(moeq_jit_compile_args, arch, 72),
    MOEQ_TEST_FIELD(moeq_jit_compile_args, device, 96),
    MOEQ_TEST_FIELD(moeq_jit_compile_args, flags, 104),
    MOEQ_TEST_FIELD(moeq_jit_compile_args, cache_hit, 108),
    MOEQ_TEST_FIELD(moeq_jit_compile_args, cubin, 112),
    MOEQ_TEST_FIELD(moeq_jit_compile_args, cubin_size, 120),
    MOEQ_TEST_FIELD(moeq_jit_compile_args, image_kind, 128),
    MOEQ_TEST_FIELD(moeq_host_method_create_args, create_args, 16),
    MOEQ_TEST_FIELD(moeq_host_api, abi_major, 8),
    MOEQ_TEST_FIELD(moeq_host_api, abi_minor, 12),
    MOEQ_TEST_FIELD(moeq_host_api, status_create, 16),
    MOEQ_TEST_FIELD(moeq_host_api, log, 48),
    MOEQ_TEST_FIELD(moeq_host_api, param_create, 64),
    MOEQ_TEST_FIELD(moeq_host_api, method_create, 96),
    MOEQ_TEST_FIELD(moeq_host_api, scratch_acquire, 104),
    MOEQ_TEST_FIELD(moeq_host_api, scratch_release, 112),
    MOEQ_TEST_FIELD(moeq_initialize_args, host, 8),
    MOEQ_TEST_FIELD(moeq_probe_args, weight_dtype, 32),
    MOEQ_TEST_FIELD(moeq_probe_args, score, 40),
    MOEQ_TEST_FIELD(moeq_probe_args, reason, 48),
    MOEQ_TEST_FIELD(moeq_probe_args, reason_capacity, 56),
    MOEQ_TEST_FIELD(moeq_method_create_args, geometry, 32),
    MOEQ_TEST_FIELD(moeq_method_create_args, device, 40),
    MOEQ_TEST_FIELD(moeq_method_create_args, method, 48),
    MOEQ_TEST_FIELD(moeq_weight_loader_args, projection, 40),
    MOEQ_TEST_FIELD(moeq_weight_loader_args, global_expert, 48),
    MOEQ_TEST_FIELD(moeq_weight_loader_args, source, 64),
    MOEQ_TEST_FIELD(moeq_weight_loader_args, skipped, 72),
    MOEQ_TEST_FIELD(moeq_weight_loader_args, skip_reason_capacity, 88),
    MOEQ_TEST_FIELD(moeq_apply_args, x, 16),
    MOEQ_TEST_FIELD(moeq_apply_args, out, 40),
    MOEQ_TEST_FIELD(moeq_apply_args, stream, 48),
    MOEQ_TEST_FIELD(moeq_apply_args, workspace, 56),
    MOEQ_TEST_FIELD(moeq_apply_args, workspace_bytes, 64),
    MOEQ_TEST_FIELD(moeq_describe_args, json_capacity, 24),
    MOEQ_TEST_FIELD(moeq_dequantize_expert_args, local_expert, 16),
    MOEQ_TEST_FIELD(moeq_dequantize_expert_args, a1_quant, 40),
    MOEQ_TEST_FIELD(moeq_dequantize_expert_args, group_size, 48),
    MOEQ_TEST_FIELD(moeq_dequantize_expert_args, a2_static_scale, 60),
    MOEQ_TEST_FIELD(moeq_plugin_api, initialize, 8),
    MOEQ_TEST_FIELD(moeq_plugin_api, shutdown, 16),
    MOEQ_TEST_FIELD(moeq_plugin_api, probe, 24),
    MOEQ_TEST_FIELD(moeq_plugin_api, apply, 72),
    MOEQ_TEST_FIELD(moeq_plugin_api, describe, 80),
    MOEQ_TEST_FIELD(moeq_plugin_api, dequantize_expert, 88),
    MOEQ_TEST_FIELD(moeq_plugin_api, apply_info, 96),
    MOEQ_TEST_FIELD(moeq_scratch_args, layer, 8),
    MOEQ_TEST_FIELD(moeq_scratch_args, bytes, 16),
    MOEQ_TEST_FIELD(moeq_scratch_args, purpose, 24),
    MOEQ_TEST_FIELD(moeq_apply_info_args, max_tokens, 16),
    MOEQ_TEST_FIELD(moeq_apply_info_args, workspace_bytes, 24),
    MOEQ_TEST_FIELD(moeq_apply_info_args, tokens_per_pass, 32),
    MOEQ_TEST_FIELD(moeq_apply_info_args, x_dtypes, 40),
    MOEQ_TEST_FIELD(moeq_plugin_descriptor, abi_major, 8),
    MOEQ_TEST_FIELD(moeq_plugin_descriptor, abi_minor, 12),
    MOEQ_TEST_FIELD(moeq_plugin_descriptor, min_host_minor, 16),
    MOEQ_TEST_FIELD(moeq_plugin_descriptor, name, 24),
    MOEQ_TEST_FIELD(moeq_plugin_descriptor, requires_plugins, 56),
    MOEQ_TEST_FIELD(moeq_plugin_descriptor, capabilities, 72),
    MOEQ_TEST_FIELD(moeq_plugin_descriptor, api, 88),
};

constexpr bool kLP64 = sizeof(void*) == 8 && sizeof(long) == 8;

}  // namespace

TEST_CASE("abi.h compiles as C11 and C lists the same structs the C++ test checks") {
  CHECK(moeq_test_c_struct_count() == std::size(kStructs));
  // Per struct: a whole-struct row plus struct_size and the last field.
  CHECK(moeq_test_c_row_count() >= 3 * std::size(kStructs));
}

TEST_CASE("C and C++ agree on the size of every ABI struct and on MOEQ_STRUCT_SIZE") {
  for (const StructLayout& s : kStructs) {
    CAPTURE(s.type);
    CHECK(moeq_test_c_sizeof(s.type) == s.cxx_sizeof);
    CHECK(moeq_test_c_struct_size(s.type) == s.cxx_struct_size);
  }
}

TEST_CASE("ABI struct sizes and MOEQ_STRUCT_SIZE of the last field are the LP64 numbers") {
  if (!kLP64) return;
  for (const StructLayout& s : kStructs) {
    CAPTURE(s.type);
    CHECK(s.cxx_sizeof == s.lp64_sizeof);
    CHECK(s.cxx_struct_size == s.lp64_struct_size);
  }
  // The three the header annotates, spelled out.
  CHECK(sizeof(moeq_layer_geometry) == 80);
  CHECK(sizeof(moeq_plugin_api) == 104);  // 12 slots since 1.2
  CHECK(sizeof(moeq_plugin_descriptor) == 96);
  // jit_compile's args grew image_kind in 1.2; a caller that stops at cubin_size keeps its 128.
  CHECK(sizeof(moeq_jit_compile_args) == 136);
  CHECK(MOEQ_STRUCT_SIZE(moeq_jit_compile_args, cubin_size) == 128);
}

TEST_CASE("the last field named for MOEQ_STRUCT_SIZE really is last: only tail padding follows") {
  for (const StructLayout& s : kStructs) {
    CAPTURE(s.type);
    CAPTURE(s.last_field);
    CHECK(s.cxx_struct_size <= s.cxx_sizeof);
    CHECK(s.cxx_sizeof - s.cxx_struct_size < s.cxx_align);
    CHECK(moeq_test_c_offsetof(s.type, s.last_field) + moeq_test_c_field_size(s.type, s.last_field) ==
          s.cxx_struct_size);
  }
}

TEST_CASE("struct_size is the first field of every struct that crosses") {
  for (const StructLayout& s : kStructs) {
    CAPTURE(s.type);
    CHECK(s.cxx_struct_size_offset == 0);
    CHECK(moeq_test_c_offsetof(s.type, "struct_size") == 0);
    CHECK(moeq_test_c_field_size(s.type, "struct_size") == sizeof(size_t));
  }
}

TEST_CASE("C and C++ agree on the offset and size of key fields, which sit where LP64 puts them") {
  for (const FieldLayout& f : kFields) {
    CAPTURE(f.type);
    CAPTURE(f.field);
    CHECK(moeq_test_c_offsetof(f.type, f.field) == f.cxx_offset);
    CHECK(moeq_test_c_field_size(f.type, f.field) == f.cxx_size);
    if (kLP64) CHECK(f.cxx_offset == f.lp64_offset);
  }
}

TEST_CASE("the fields a host reads before it trusts struct_size never move") {
  // abi_major/abi_minor follow struct_size directly, so a host can read the major of a plugin
  // from any major and refuse it with a clear message.
  CHECK(offsetof(moeq_plugin_descriptor, abi_major) == sizeof(size_t));
  CHECK(offsetof(moeq_plugin_descriptor, abi_minor) == sizeof(size_t) + sizeof(uint32_t));
  CHECK(offsetof(moeq_host_api, abi_major) == sizeof(size_t));
  CHECK(MOEQ_STRUCT_SIZE(moeq_plugin_api, describe) == offsetof(moeq_plugin_api, describe) + sizeof(void*));
}
