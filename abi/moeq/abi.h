/* moeq/abi.h — the only contract between the moeq host and a quantization plugin.
 *
 * Pure C11. A plugin is a shared object that exports exactly one symbol,
 * `moeq_plugin_get_descriptor`, returning a static descriptor with the plugin's function
 * table. The host hands the plugin a table of host services at `initialize`.
 *
 * Conventions used by every declaration below:
 * - Every struct that crosses starts with `size_t struct_size`, set by whoever fills the
 *   struct to MOEQ_STRUCT_SIZE(type, last_field_it_knows). A receiver accepts any
 *   struct_size >= the size it knows and ignores what lies beyond; a smaller size than the
 *   receiver's v1.0 size is an INVALID_ARGUMENT.
 * - Errors are `moeq_status*`: NULL means success. A status is created through the host
 *   services table (`status_create`) and owned by whoever receives it; the receiver frees
 *   it with `status_destroy`. No C++ exception may cross this boundary.
 * - Tensors are DLPack `DLTensor` views that own nothing. `strides` is always set (never
 *   NULL) and counts elements. FP8 e4m3fn uses the DLPack 1.1 type code
 *   MOEQ_DL_FLOAT8_E4M3FN (bits 8, lanes 1).
 * - Fields marked `// out` are written by the callee.
 */
#ifndef MOEQ_ABI_H_
#define MOEQ_ABI_H_

#include <stddef.h>
#include <stdint.h>

#include <dlpack/dlpack.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ===================================================================== versioning ===== */

/* Versioning rules, in plain words:
 * - The major version changes only when an existing field or slot changes meaning or place.
 *   A host refuses a plugin of another major.
 * - The minor version moves when a field is appended to a struct, a slot to a table, or a
 *   value to an enum. Nothing is ever removed or reordered within a major.
 * - A plugin records the minor it was built with (`abi_minor`) and the oldest host minor it
 *   needs (`min_host_minor`). A host older than `min_host_minor` refuses the plugin with a
 *   reason; a plugin newer than the host is accepted and used at the host's minor (slots the
 *   host does not know are never called). */
#define MOEQ_ABI_MAJOR 1
#define MOEQ_ABI_MINOR 2

/* Size of a struct up to and including `last_field`: what a producer built against an
 * older minor sets as struct_size. */
#define MOEQ_STRUCT_SIZE(type, last_field) \
  (offsetof(type, last_field) + sizeof(((type*)0)->last_field))

/* DLPack 1.1 type code for float8_e4m3fn (DLPack 0.x headers do not define it). */
#define MOEQ_DL_FLOAT8_E4M3FN 10

/* ======================================================================== errors ====== */

typedef enum moeq_status_code {
  MOEQ_STATUS_CODE_OK = 0,
  MOEQ_STATUS_CODE_INVALID_ARGUMENT = 1,  /* bad input: shape, dtype, name, value */
  MOEQ_STATUS_CODE_NOT_FOUND = 2,         /* a named thing does not exist */
  MOEQ_STATUS_CODE_UNIMPLEMENTED = 3,     /* the callee does not do this (yet) */
  MOEQ_STATUS_CODE_FAILED_PRECONDITION = 4, /* called in the wrong state */
  MOEQ_STATUS_CODE_OUT_OF_MEMORY = 5,
  MOEQ_STATUS_CODE_UNAVAILABLE = 6,       /* e.g. no CUDA driver */
  MOEQ_STATUS_CODE_INTERNAL = 7
} moeq_status_code;

/* Opaque; made by the host. NULL = success. */
typedef struct moeq_status moeq_status;

typedef enum moeq_log_level {
  MOEQ_LOG_LEVEL_DEBUG = 0,
  MOEQ_LOG_LEVEL_INFO = 1,
  MOEQ_LOG_LEVEL_WARNING = 2,
  MOEQ_LOG_LEVEL_ERROR = 3
} moeq_log_level;

/* ====================================================================== handles ======= */

/* A plugin's per-layer state. Owned by the plugin, created by `method_create`, released by
 * `method_destroy`. The host never looks inside. */
typedef struct moeq_method moeq_method;

/* The host's per-layer state (parameters, ledger). Owned by the host. Valid from
 * `create_weights` until the host destroys the method. */
typedef struct moeq_layer moeq_layer;

typedef enum moeq_projection {
  MOEQ_PROJECTION_W1 = 1, /* gate_proj: rows [0, I) of w13 */
  MOEQ_PROJECTION_W2 = 2, /* down_proj */
  MOEQ_PROJECTION_W3 = 3  /* up_proj: rows [I, 2I) of w13 */
} moeq_projection;

typedef enum moeq_activation {
  MOEQ_ACTIVATION_SILU = 0 /* gated: silu(gate) * up */
} moeq_activation;

/* Geometry and placement of one MoE layer, decided by the host from config.json and the
 * user's TP/EP choice. EP placement is linear: this rank owns the global experts
 * [first_local_expert, first_local_expert + num_local_experts). */
typedef struct moeq_layer_geometry {
  size_t struct_size;
  int64_t num_experts;          /* global expert count */
  int64_t num_local_experts;
  int64_t first_local_expert;
  int64_t hidden_size;          /* H */
  int64_t intermediate_size;    /* I, full, as in the checkpoint */
  int64_t intermediate_size_per_partition; /* I / tp_size */
  int32_t tp_rank;
  int32_t tp_size;
  int32_t ep_rank;
  int32_t ep_size;
  int32_t top_k;
  int32_t activation;           /* moeq_activation */
} moeq_layer_geometry;
/* LP64 size: 80 */

/* ================================================================ host services ====== */

typedef struct moeq_device_info_args {
  size_t struct_size;
  DLDevice device;            /* which device to describe */
  int32_t available;          /* out: 1 if usable */
  int32_t sm_major;           /* out: CUDA compute capability, 0 on CPU */
  int32_t sm_minor;           /* out */
  int32_t multiprocessors;    /* out */
  int64_t memory_bytes;       /* out */
  /* Since 1.2: the exact architecture jit_compile builds for on this device ("sm_90a",
   * "sm_89"; "" on a CPU or without a driver). A plugin passes `arch` NULL to jit_compile and
   * reads this for its own messages: it never derives an arch itself. A 1.1 host leaves the
   * field as the caller set it (check host->abi_minor >= 2). */
  char arch[16];              /* out: NUL-terminated */
} moeq_device_info_args;
/* LP64 size: 56 */

/* Declare one parameter of a layer; the host allocates it on the layer's device (host memory
 * for kDLCPU, device memory in the primary context for kDLCUDA) and keeps it until the layer
 * is destroyed. The returned DLTensor (and its shape/strides arrays) is
 * host-owned and valid as long as the layer. Every element must later be written by
 * `copy_to_param` or `param_fill`, or strict loading fails naming the parameter. */
typedef struct moeq_param_create_args {
  size_t struct_size;
  moeq_layer* layer;
  const char* name;            /* unique within the layer, e.g. "w13_weight" */
  int32_t ndim;                /* 1..8 */
  const int64_t* shape;
  DLDataType dtype;
  const DLTensor* tensor;      /* out */
} moeq_param_create_args;

/* Flags for copy_to_param. */
#define MOEQ_COPY_CHECK_SCALE 1u /* every source value must be finite and > 0 */

/* Copy (and cast) a source view into a region of a parameter. The region starts at
 * `dst_offset` (param ndim entries) and has the source's shape; a source of fewer dims
 * aligns with the param's trailing dims (leading extents 1). Supported casts: any of
 * F32/BF16/F16 to F32/BF16/F16; same-dtype copies of any dtype. The host records the region
 * as written in the load ledger and names the checkpoint tensor being loaded in any error.
 * Into a kDLCUDA parameter the copy is queued (the source is read before the call returns);
 * every queued byte is on the device when process_after_loading is called.
 * Since 1.1: the source may be kDLCUDA memory on the parameter's device (a plugin that
 * quantizes on the device): same dtype only, rows contiguous (innermost stride 1), ready when
 * the call is made (synchronize your stream first); the host copies device to device and has
 * read the source when the call returns. A 1.0 host answers INVALID_ARGUMENT ("source must
 * be host memory"): check `host->abi_minor >= 1` first. */
typedef struct moeq_copy_to_param_args {
  size_t struct_size;
  moeq_layer* layer;
  const DLTensor* param;       /* a tensor returned by param_create for this layer */
  const int64_t* dst_offset;
  const DLTensor* source;      /* host memory, strided view (since 1.1 also the param's device) */
  uint32_t flags;              /* MOEQ_COPY_* */
} moeq_copy_to_param_args;

/* Fill a region with a value and record it as *declared default* in the ledger (padding,
 * or a scale that the scheme defines as 1). */
typedef struct moeq_param_fill_args {
  size_t struct_size;
  moeq_layer* layer;
  const DLTensor* param;
  const int64_t* dst_offset;   /* param ndim entries */
  const int64_t* extent;       /* param ndim entries */
  double value;
  const char* reason;          /* recorded in the ledger */
} moeq_param_fill_args;

/* Flags for jit_compile. */
#define MOEQ_JIT_COMPILE_ONLY 1u /* compile (and cache) only; load nothing, `module` stays NULL */
#define MOEQ_JIT_SOURCE_PTX 2u   /* since 1.2: `source` is a PTX module (e.g. emitted by Triton),
                                    compiled by the toolkit's PTX compiler (nvJitLink) for the
                                    exact arch; no headers; `options` are nvJitLink's (-O3,
                                    -lineinfo, never -arch: the host chooses). Errors: the
                                    compiler's log for a malformed module, an ISA newer than the
                                    compiler, a .target the arch cannot take; UNAVAILABLE when the
                                    host finds no nvJitLink. A 1.1 host does not know the flag
                                    (check host->abi_minor >= 2); a 1.2 host refuses flags it
                                    does not know. */

/* Values of moeq_jit_compile_args.image_kind (since 1.2). */
#define MOEQ_JIT_IMAGE_CUBIN 0 /* a CUBIN for the exact arch */
#define MOEQ_JIT_IMAGE_PTX 1   /* PTX, the forward-compatible fallback (see jit_compile) */

/* Compile CUDA source with NVRTC to a CUBIN for one exact architecture, through the host's
 * on-disk cache, and load it into the primary context of `device`. The host adds
 * `--gpu-architecture=<arch> -std=c++17 -default-device` and the toolkit's include
 * directories, then the caller's options. The source is compiled as C++ for the device;
 * kernels should be `extern "C"` so that their names are the ones in the module.
 * The cache key covers the source, every header (given ones by content, toolkit ones found
 * on disk), the options, the arch, the NVRTC version and the plugin's name and version.
 * Errors: INVALID_ARGUMENT with NVRTC's log when the source does not compile; UNAVAILABLE
 * when a module is wanted (or `arch` is NULL) and there is no CUDA driver; UNIMPLEMENTED
 * from a host built without NVRTC. Inputs are read during the call only. Any thread; calls
 * may run concurrently (identical requests compile once).
 * Forward compatibility: when the arch is newer than the newest the host's NVRTC can build a
 * CUBIN for (a device released after the toolkit), the source is compiled instead to PTX for
 * the newest plain virtual arch NVRTC knows (compute_XX); the CUDA driver compiles that PTX for
 * the device when it loads the module. The host logs a warning naming the kernel set, and
 * `image_kind` says MOEQ_JIT_IMAGE_PTX. Never for a MOEQ_JIT_SOURCE_PTX module.
 * Fields from `header_names` on were appended before 1.0 was released; a 1.0 caller sets
 * struct_size to cover `cubin_size`. `image_kind` was appended in 1.2: the host writes it only
 * when struct_size covers it. */
typedef struct moeq_jit_compile_args {
  size_t struct_size;
  const char* name;            /* kernel set name, for the cache and messages */
  const char* source;          /* NUL-terminated CUDA C++ */
  const char* const* options;  /* extra NVRTC options, e.g. "-DBLOCK_M=64" */
  size_t num_options;
  void* module;                /* out: CUmodule, host-owned, loaded for the life of the process;
                                  NULL with MOEQ_JIT_COMPILE_ONLY */
  const char* const* header_names;    /* as the source includes them, e.g. "moeq_fp8.cuh" */
  const char* const* header_contents; /* NUL-terminated, parallel to header_names */
  size_t num_headers;
  const char* arch;            /* "sm_90a", "sm_89", "sm_80"; NULL = the arch of `device` */
  const char* plugin_name;     /* part of the cache key and of messages */
  const char* plugin_version;
  DLDevice device;             /* kDLCUDA device to load the module on */
  uint32_t flags;              /* MOEQ_JIT_* */
  int32_t cache_hit;           /* out: 1 if no compile ran (disk cache or this process) */
  const void* cubin;           /* out: the CUBIN (ELF) image, or on a device newer than the host's
                                  NVRTC the PTX the driver compiled at load (NUL-terminated
                                  text; see image_kind); host-owned, valid for the life of the
                                  process */
  size_t cubin_size;           /* out: bytes of `cubin` (for PTX, counting its NUL) */
  int32_t image_kind;          /* out, since 1.2: 0 CUBIN, 1 PTX (forward-compatible fallback) */
} moeq_jit_compile_args;
/* LP64 size: 136 (MOEQ_STRUCT_SIZE up to image_kind: 132; up to cubin_size: 128) */

/* Create a method of another plugin by name (delegation). The caller owns the returned
 * method and destroys it with `api->method_destroy`; `api` is the other plugin's table, valid
 * for the life of the process. */
struct moeq_plugin_api;
struct moeq_method_create_args;
typedef struct moeq_host_method_create_args {
  size_t struct_size;
  const char* plugin_name;
  struct moeq_method_create_args* create_args; /* forwarded as is */
  const struct moeq_plugin_api* api;           /* out */
} moeq_host_method_create_args;

/* Since 1.2: device scratch for loading (e.g. a projection quantized on the device), lent by
 * the host on the layer's device. Call only while the layer loads: from create_weights until
 * process_after_loading returns. The memory is uninitialized, 256-byte aligned and the
 * caller's until it calls scratch_release (or process_after_loading returns: the host takes
 * back whatever the layer still holds then, logging a warning, and fails nothing).
 * The host bounds the scratch lent on one device at once, over every layer loading onto it:
 * an acquire waits while other layers hold scratch and this request would pass the budget
 * (LoadOptions::load_scratch_bytes, default one bf16 expert of the largest layer + 64 MiB);
 * a layer that already holds scratch never waits, so no two layers wait on each other. A
 * request the device cannot hold fails with OUT_OF_MEMORY naming `purpose`. A kDLCPU layer
 * gets INVALID_ARGUMENT: host memory is the plugin's own. */
typedef struct moeq_scratch_args {
  size_t struct_size;
  moeq_layer* layer;
  size_t bytes;                /* > 0 */
  const char* purpose;         /* for messages, e.g. "online quantization of w1" */
  void* data;                  /* out: device address (CUdeviceptr) */
} moeq_scratch_args;
/* LP64 size: 40 */

/* The host services table. Host-owned, static for the life of the process. Every slot is
 * present (non-NULL) in a 1.0 host; threads: every slot may be called from any thread,
 * but calls about one layer must come from the thread currently calling the plugin for it. */
typedef struct moeq_host_api {
  size_t struct_size;
  uint32_t abi_major;
  uint32_t abi_minor;
  /* errors: status_create copies `message`; the status is owned by whoever receives it. */
  moeq_status* (*status_create)(moeq_status_code code, const char* message);
  moeq_status_code (*status_code)(const moeq_status* status);
  const char* (*status_message)(const moeq_status* status); /* valid until destroyed */
  void (*status_destroy)(moeq_status* status);
  /* logging: `source` is the plugin name; never from apply. */
  void (*log)(moeq_log_level level, const char* source, const char* message);
  moeq_status* (*device_info)(moeq_device_info_args* args);
  /* parameters */
  moeq_status* (*param_create)(moeq_param_create_args* args);
  moeq_status* (*copy_to_param)(moeq_copy_to_param_args* args);
  moeq_status* (*param_fill)(moeq_param_fill_args* args);
  /* JIT (UNIMPLEMENTED from a host built without NVRTC) */
  moeq_status* (*jit_compile)(moeq_jit_compile_args* args);
  /* delegation */
  moeq_status* (*method_create)(moeq_host_method_create_args* args);
  /* since 1.2: loading scratch on the layer's device (see moeq_scratch_args). Releasing NULL
   * or an address the layer does not hold does nothing. */
  moeq_status* (*scratch_acquire)(moeq_scratch_args* args);
  void (*scratch_release)(moeq_layer* layer, void* data);
} moeq_host_api;

/* ================================================================= plugin table ====== */

/* Called once per process before any other slot, single-threaded. `host` is valid for the
 * life of the process. */
typedef struct moeq_initialize_args {
  size_t struct_size;
  const moeq_host_api* host;
} moeq_initialize_args;
typedef moeq_status* (*moeq_initialize_fn)(moeq_initialize_args* args);

/* Called once at process exit; no other call follows. */
typedef void (*moeq_shutdown_fn)(void);

/* Does this plugin take this MoE layer? Pure: no allocation through the host, no CUDA, no
 * logging, deterministic. Fully concurrent. Strings are valid for the call only.
 * score 0 = decline (then `reason` says why); higher wins; the host breaks no ties. */
typedef struct moeq_probe_args {
  size_t struct_size;
  const char* quant_config_json;   /* effective quantization config, "null" if none */
  const char* quant_config_source; /* "config.json", "hf_quant_config.json" or "none" */
  const char* layer_name;          /* module path of the experts, e.g. "model.layers.0.mlp.experts" */
  const char* weight_dtype;        /* safetensors dtype of the layer's expert weights, "F8_E4M3" */
  int32_t score;                   /* out */
  char* reason;                    /* out: host buffer, NUL-terminated by the callee */
  size_t reason_capacity;
} moeq_probe_args;
typedef moeq_status* (*moeq_probe_fn)(moeq_probe_args* args);

/* Create the plugin's state for one MoE layer. The strings and geometry are valid for the
 * call only (copy what you keep). Calls for different layers may run concurrently. */
typedef struct moeq_method_create_args {
  size_t struct_size;
  const char* quant_config_json;
  const char* layer_name;
  const char* weight_dtype;
  const moeq_layer_geometry* geometry;
  DLDevice device;              /* where parameters live and apply runs */
  moeq_method* method;          /* out */
} moeq_method_create_args;
typedef moeq_status* (*moeq_method_create_fn)(moeq_method_create_args* args);

/* Release a method; never fails. The host calls it exactly once per method. */
typedef void (*moeq_method_destroy_fn)(moeq_method* method);

/* Declare the layer's parameters through host->param_create. The plugin keeps the returned
 * DLTensor pointers; they stay valid until the method is destroyed. */
typedef struct moeq_create_weights_args {
  size_t struct_size;
  moeq_method* method;
  moeq_layer* layer;
} moeq_create_weights_args;
typedef moeq_status* (*moeq_create_weights_fn)(moeq_create_weights_args* args);

/* Load one checkpoint tensor of one expert and one projection. `source` is the whole,
 * unsharded per-expert tensor (e.g. [I, H] for w1, [H, I] for w2, [I, 1] for a channel
 * scale) as a read-only host view into the mapped file; fused checkpoint tensors arrive
 * already split per expert and projection. The plugin narrows to its TP shard and copies
 * with host->copy_to_param, or sets `skipped` with a reason. Calls on one method are
 * serialized by the host. */
typedef struct moeq_weight_loader_args {
  size_t struct_size;
  moeq_method* method;
  moeq_layer* layer;
  const char* tensor_name;     /* full checkpoint name, for messages */
  const char* suffix;          /* "weight", "weight_scale", "weight_scale_inv", "input_scale", ... */
  int32_t projection;          /* moeq_projection */
  int64_t global_expert;
  int64_t local_expert;        /* index into the layer's local experts */
  const DLTensor* source;
  int32_t skipped;             /* out: 1 = not used; the reason goes to `skip_reason` */
  char* skip_reason;           /* out: host buffer */
  size_t skip_reason_capacity;
} moeq_weight_loader_args;
typedef moeq_status* (*moeq_weight_loader_fn)(moeq_weight_loader_args* args);

/* After every tensor of the layer was loaded: check completeness the plugin cares about,
 * transform (requantize, repack) and compile kernels. */
typedef struct moeq_process_after_loading_args {
  size_t struct_size;
  moeq_method* method;
  moeq_layer* layer;
} moeq_process_after_loading_args;
typedef moeq_status* (*moeq_process_after_loading_fn)(moeq_process_after_loading_args* args);

/* Since 1.2: what apply takes, asked by the host once after process_after_loading (and again
 * whenever it likes: pure, no allocation). `max_tokens` is the most tokens the host will
 * pass to one apply (0: no bound known); the method answers the workspace it needs for
 * that and how many tokens it then runs in one pass (it splits larger batches itself), and
 * the activation dtypes it takes. A method whose apply needs no workspace answers 0 bytes.
 * Bit masks of dtypes: MOEQ_DTYPE_BIT_*. */
#define MOEQ_DTYPE_BIT_F32 1u
#define MOEQ_DTYPE_BIT_BF16 2u
#define MOEQ_DTYPE_BIT_F16 4u
typedef struct moeq_apply_info_args {
  size_t struct_size;
  moeq_method* method;
  int64_t max_tokens;          /* >= 0 */
  size_t workspace_bytes;      /* out: 0 = none */
  int64_t tokens_per_pass;     /* out: tokens one pass takes with that workspace (>= 1;
                                  INT64_MAX: any batch at once) */
  uint32_t x_dtypes;           /* out: MOEQ_DTYPE_BIT_* apply takes for x */
  uint32_t out_dtypes;         /* out: ... for out */
} moeq_apply_info_args;
/* LP64 size: 48 */
typedef moeq_status* (*moeq_apply_info_fn)(moeq_apply_info_args* args);

/* Run the experts: out[m] = sum_j topk_weights[m,j] * expert_{topk_ids[m,j]}(x[m]).
 * x [M,H] and out [M,H] are F32/BF16/F16 (as apply_info declares) on the method's device;
 * topk_ids [M,k] int32 hold global expert ids (experts not local to this rank contribute
 * nothing); topk_weights [M,k] f32. With TP the result is this rank's partial sum.
 * Allocates nothing through the host, compiles nothing, logs nothing. Reentrant across
 * methods; calls on one method serialized by the host.
 *
 * On a CUDA device apply only queues work on `stream` and returns: every tensor, and the
 * workspace, must stay valid (and x, the routing and the workspace unchanged by anyone else)
 * until that work completes; out is written by it. Nothing is synchronized, so an apply may be
 * captured in a CUDA graph (MOEQ_CAP_GRAPH_CAPTURABLE), whose replays then read and write the
 * same addresses. On the CPU apply is synchronous and `stream` is NULL.
 *
 * Workspace (since 1.2): when the plugin has apply_info and it answered workspace_bytes > 0,
 * the host passes a workspace of at least that many bytes on the method's device, 256-byte
 * aligned, with any content: the method keeps nothing in it from one apply to the next. One
 * workspace may serve several methods (layers) only if their applies are ordered on the
 * device: the same stream, or a stream that waits (an event) for the previous apply's work.
 * A method gets no workspace from a 1.0/1.1 host, nor when it has no apply_info: it then
 * owns what it needs (allocated before apply), as before 1.2. */
typedef struct moeq_apply_args {
  size_t struct_size;
  moeq_method* method;
  const DLTensor* x;
  const DLTensor* topk_ids;
  const DLTensor* topk_weights;
  const DLTensor* out;
  void* stream;                /* cudaStream_t on CUDA devices, NULL on CPU */
  void* workspace;             /* since 1.2: device address, NULL when none is needed */
  size_t workspace_bytes;      /* since 1.2 */
} moeq_apply_args;
/* LP64 size: 72 */
typedef moeq_status* (*moeq_apply_fn)(moeq_apply_args* args);

/* Describe what the method found and chose (scheme, scale names, granularity) as one JSON
 * object, for `moeq inspect`. Optional. */
typedef struct moeq_describe_args {
  size_t struct_size;
  moeq_method* method;
  char* json;                  /* out: host buffer */
  size_t json_capacity;
} moeq_describe_args;
typedef moeq_status* (*moeq_describe_fn)(moeq_describe_args* args);

/* Activation quantization a method applies before a GEMM, so that a float reference can do
 * the same (docs/MOE_SEMANTICS.md §5). */
typedef enum moeq_act_quant {
  MOEQ_ACT_QUANT_NONE = 0,
  MOEQ_ACT_QUANT_FP8_PER_TOKEN = 1,
  MOEQ_ACT_QUANT_FP8_PER_GROUP = 2,
  MOEQ_ACT_QUANT_FP8_PER_TENSOR_DYNAMIC = 3,
  MOEQ_ACT_QUANT_FP8_PER_TENSOR_STATIC = 4
} moeq_act_quant;

/* Write the float values the method holds for one local expert (its dequantized, sharded
 * weights) and the activation quantization it applies, for comparison with the core's float
 * reference. Host-owned output buffers; called after process_after_loading; optional. */
typedef struct moeq_dequantize_expert_args {
  size_t struct_size;
  moeq_method* method;
  int64_t local_expert;
  float* w13;                  /* out: [2 * I_tp, H], gate rows then up rows */
  float* w2;                   /* out: [H, I_tp] */
  int32_t a1_quant;            /* out: moeq_act_quant before GEMM1 */
  int32_t a2_quant;            /* out: moeq_act_quant before GEMM2 */
  int64_t group_size;          /* out: for FP8_PER_GROUP */
  float a1_static_scale;       /* out: for FP8_PER_TENSOR_STATIC */
  float a2_static_scale;       /* out */
} moeq_dequantize_expert_args;
typedef moeq_status* (*moeq_dequantize_expert_fn)(moeq_dequantize_expert_args* args);

/* The plugin's function table: one slot per line. */
typedef struct moeq_plugin_api {
  size_t struct_size;
  moeq_initialize_fn initialize;                  /* required */
  moeq_shutdown_fn shutdown;                      /* optional, since 1.0: NULL = nothing to do */
  moeq_probe_fn probe;                            /* required */
  moeq_method_create_fn method_create;            /* required */
  moeq_method_destroy_fn method_destroy;          /* required */
  moeq_create_weights_fn create_weights;          /* required */
  moeq_weight_loader_fn weight_loader;            /* required */
  moeq_process_after_loading_fn process_after_loading; /* required */
  moeq_apply_fn apply;                            /* required */
  moeq_describe_fn describe;                      /* optional, since 1.0: NULL = no details */
  moeq_dequantize_expert_fn dequantize_expert;    /* optional, since 1.0: NULL = no reference check */
  moeq_apply_info_fn apply_info;                  /* optional, since 1.2: NULL = no host workspace;
                                                     apply takes what the capabilities say */
} moeq_plugin_api;
/* LP64 size: 104 */

/* Capability bits of a descriptor. */
#define MOEQ_CAP_CPU_APPLY 1ull          /* apply runs on kDLCPU */
#define MOEQ_CAP_CUDA_APPLY 2ull         /* apply runs on kDLCUDA */
#define MOEQ_CAP_GRAPH_CAPTURABLE 4ull   /* CUDA apply may be captured in a CUDA graph */
#define MOEQ_CAP_DELEGATES 8ull          /* creates methods of other plugins */

/* Static, pure: returned by the entry symbol without allocation, CUDA or environment. */
typedef struct moeq_plugin_descriptor {
  size_t struct_size;
  uint32_t abi_major;          /* must equal the host's MOEQ_ABI_MAJOR */
  uint32_t abi_minor;          /* minor the plugin was built with */
  uint32_t min_host_minor;     /* oldest host minor the plugin needs */
  uint32_t reserved0;
  const char* name;            /* unique, [a-z0-9_]+ */
  const char* version;         /* semver */
  const char* const* schemes;  /* human names of the schemes it claims */
  size_t num_schemes;
  const char* const* requires_plugins; /* plugins it delegates to */
  size_t num_requires_plugins;
  uint64_t capabilities;       /* MOEQ_CAP_* */
  const char* build_info;
  const moeq_plugin_api* api;
} moeq_plugin_descriptor;
/* LP64 size: 96 */

/* The one exported entry symbol. */
#define MOEQ_PLUGIN_ENTRY_SYMBOL "moeq_plugin_get_descriptor"
typedef const moeq_plugin_descriptor* (*moeq_plugin_get_descriptor_fn)(void);

#ifdef __cplusplus
}
#endif

#endif /* MOEQ_ABI_H_ */
