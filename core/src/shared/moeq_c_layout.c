/* The one source of libmoeq_c.so (core/CMakeLists.txt): moeq/moeq.h compiles as C11, and the
 * LP64 layout of its structs is pinned here, where a change would break the bindings that
 * mirror them (python/moeq/_capi.py checks the same sizes and offsets). */
#include <moeq/moeq.h>

#include <stddef.h>

_Static_assert(sizeof(moeq_load_options) == 72, "moeq_load_options: LP64 size 72");
_Static_assert(offsetof(moeq_load_options, device) == 24, "moeq_load_options.device at 24");
_Static_assert(offsetof(moeq_load_options, online_scheme) == 32, "moeq_load_options.online_scheme at 32");
_Static_assert(offsetof(moeq_load_options, strict) == 48, "moeq_load_options.strict at 48");
_Static_assert(offsetof(moeq_load_options, max_tokens) == 56, "moeq_load_options.max_tokens at 56");
_Static_assert(offsetof(moeq_load_options, workspace) == 64, "moeq_load_options.workspace at 64");
_Static_assert(sizeof(moeq_layer_info) == 184, "moeq_layer_info: LP64 size 184");
_Static_assert(offsetof(moeq_layer_info, geometry) == 56, "moeq_layer_info.geometry at 56");
_Static_assert(offsetof(moeq_layer_info, device) == 136, "moeq_layer_info.device at 136");
_Static_assert(offsetof(moeq_layer_info, workspace_bytes) == 152, "moeq_layer_info.workspace_bytes at 152");
_Static_assert(offsetof(moeq_layer_info, tokens_per_pass) == 160, "moeq_layer_info.tokens_per_pass at 160");
_Static_assert(offsetof(moeq_layer_info, routed_scaling_factor) == 176, "moeq_layer_info.routed_scaling_factor at 176");
_Static_assert(offsetof(moeq_layer_info, weight_on_input) == 180, "moeq_layer_info.weight_on_input at 180");
