/* Compiled as C11: the layout of every ABI struct as a C compiler sees it, for test_abi.cpp
 * to compare with what the C++ compiler sees and with the LP64 numbers in abi.h. Including
 * the header here also proves it is valid C. */
#include <moeq/abi.h>

#include <string.h>

/* One row per field: offset and size. One row per struct with field == NULL: `offset` holds
 * MOEQ_STRUCT_SIZE(struct, its last field) and `size` holds sizeof(struct). */
typedef struct moeq_test_layout_row {
  const char* type;
  const char* field;
  size_t offset;
  size_t size;
} moeq_test_layout_row;

#define F(T, f) {#T, #f, offsetof(T, f), sizeof(((T*)0)->f)},
#define S(T, last) {#T, NULL, MOEQ_STRUCT_SIZE(T, last), sizeof(T)}, F(T, struct_size) F(T, last)

static const moeq_test_layout_row kRows[] = {
    S(moeq_layer_geometry, activation)
    F(moeq_layer_geometry, num_experts)
    F(moeq_layer_geometry, intermediate_size_per_partition)
    F(moeq_layer_geometry, tp_rank)
    F(moeq_layer_geometry, top_k)

    S(moeq_device_info_args, arch)
    F(moeq_device_info_args, memory_bytes)
    F(moeq_device_info_args, device)
    F(moeq_device_info_args, available)

    S(moeq_param_create_args, tensor)
    F(moeq_param_create_args, ndim)
    F(moeq_param_create_args, shape)
    F(moeq_param_create_args, dtype)

    S(moeq_copy_to_param_args, flags)
    F(moeq_copy_to_param_args, source)

    S(moeq_param_fill_args, reason)
    F(moeq_param_fill_args, value)

    S(moeq_jit_compile_args, image_kind)
    F(moeq_jit_compile_args, cubin_size)
    F(moeq_jit_compile_args, num_options)
    F(moeq_jit_compile_args, module)
    F(moeq_jit_compile_args, header_names)
    F(moeq_jit_compile_args, arch)
    F(moeq_jit_compile_args, device)
    F(moeq_jit_compile_args, flags)
    F(moeq_jit_compile_args, cache_hit)
    F(moeq_jit_compile_args, cubin)

    S(moeq_host_method_create_args, api)
    F(moeq_host_method_create_args, create_args)

    S(moeq_host_api, scratch_release)
    F(moeq_host_api, method_create)
    F(moeq_host_api, scratch_acquire)
    F(moeq_host_api, abi_major)
    F(moeq_host_api, abi_minor)
    F(moeq_host_api, status_create)
    F(moeq_host_api, log)
    F(moeq_host_api, param_create)

    S(moeq_initialize_args, host)

    S(moeq_probe_args, reason_capacity)
    F(moeq_probe_args, weight_dtype)
    F(moeq_probe_args, score)
    F(moeq_probe_args, reason)

    S(moeq_method_create_args, method)
    F(moeq_method_create_args, geometry)
    F(moeq_method_create_args, device)

    S(moeq_create_weights_args, layer)

    S(moeq_weight_loader_args, skip_reason_capacity)
    F(moeq_weight_loader_args, projection)
    F(moeq_weight_loader_args, global_expert)
    F(moeq_weight_loader_args, source)
    F(moeq_weight_loader_args, skipped)

    S(moeq_process_after_loading_args, layer)

    S(moeq_apply_args, workspace_bytes)
    F(moeq_apply_args, stream)
    F(moeq_apply_args, workspace)
    F(moeq_apply_args, x)
    F(moeq_apply_args, out)

    S(moeq_describe_args, json_capacity)

    S(moeq_dequantize_expert_args, a2_static_scale)
    F(moeq_dequantize_expert_args, local_expert)
    F(moeq_dequantize_expert_args, a1_quant)
    F(moeq_dequantize_expert_args, group_size)

    S(moeq_plugin_api, apply_info)
    F(moeq_plugin_api, dequantize_expert)
    F(moeq_plugin_api, initialize)
    F(moeq_plugin_api, shutdown)
    F(moeq_plugin_api, probe)
    F(moeq_plugin_api, apply)
    F(moeq_plugin_api, describe)

    S(moeq_plugin_descriptor, api)
    F(moeq_plugin_descriptor, abi_major)
    F(moeq_plugin_descriptor, abi_minor)
    F(moeq_plugin_descriptor, min_host_minor)
    F(moeq_plugin_descriptor, name)
    F(moeq_plugin_descriptor, requires_plugins)
    F(moeq_plugin_descriptor, capabilities)

    S(moeq_scratch_args, data)
    F(moeq_scratch_args, layer)
    F(moeq_scratch_args, bytes)
    F(moeq_scratch_args, purpose)

    S(moeq_apply_info_args, out_dtypes)
    F(moeq_apply_info_args, max_tokens)
    F(moeq_apply_info_args, workspace_bytes)
    F(moeq_apply_info_args, tokens_per_pass)
    F(moeq_apply_info_args, x_dtypes)
};

#undef S
#undef F

static const moeq_test_layout_row* find_row(const char* type, const char* field) {
  for (size_t i = 0; i < sizeof kRows / sizeof kRows[0]; ++i) {
    const moeq_test_layout_row* r = &kRows[i];
    if (strcmp(r->type, type) != 0) continue;
    if (field == NULL ? r->field == NULL : (r->field != NULL && strcmp(r->field, field) == 0)) return r;
  }
  return NULL;
}

/* sizeof(type) as C sees it; (size_t)-1 for a type the table does not list. */
size_t moeq_test_c_sizeof(const char* type) {
  const moeq_test_layout_row* r = find_row(type, NULL);
  return r ? r->size : (size_t)-1;
}

/* MOEQ_STRUCT_SIZE(type, <its last field>) as C sees it. */
size_t moeq_test_c_struct_size(const char* type) {
  const moeq_test_layout_row* r = find_row(type, NULL);
  return r ? r->offset : (size_t)-1;
}

size_t moeq_test_c_offsetof(const char* type, const char* field) {
  const moeq_test_layout_row* r = find_row(type, field);
  return r ? r->offset : (size_t)-1;
}

size_t moeq_test_c_field_size(const char* type, const char* field) {
  const moeq_test_layout_row* r = find_row(type, field);
  return r ? r->size : (size_t)-1;
}

/* How many rows the table has, and how many of them describe a whole struct. */
size_t moeq_test_c_row_count(void) { return sizeof kRows / sizeof kRows[0]; }

size_t moeq_test_c_struct_count(void) {
  size_t n = 0;
  for (size_t i = 0; i < sizeof kRows / sizeof kRows[0]; ++i) n += kRows[i].field == NULL;
  return n;
}
