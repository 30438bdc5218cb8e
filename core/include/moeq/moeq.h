/* moeq/moeq.h — the C API of libmoeq, for hosts that are not C++ (Python ctypes, Rust, Go, C).
 *
 * Pure C11 over the C++ library: open a registry on a plugin directory, load a checkpoint's MoE
 * layers through it, list them, route tokens, apply a layer to DLPack tensors (host or device,
 * zero-copy, on the caller's stream), read a layer's dequantized experts.
 *
 * Errors: every function that can fail returns a moeq_status_code (MOEQ_STATUS_CODE_OK = 0 on
 * success) and, on failure, records a message naming what was wrong (file, layer, tensor,
 * expected and found) that moeq_last_error_message() returns on the same thread until that
 * thread's next failing call. Nothing throws across this boundary and nothing aborts on bad
 * input: a NULL handle or pointer is an INVALID_ARGUMENT.
 *
 * Lifetimes:
 * - moeq_registry: from moeq_registry_open until moeq_registry_free and every model loaded
 *   through it is freed (models hold a reference: freeing the registry first is allowed; the
 *   plugins stay loaded until the last model goes).
 * - moeq_model: from moeq_model_load until moeq_model_free. Every string and struct the model
 *   hands out (moeq_layer_info's strings) lives as long as the model. Free a model only after
 *   the device work of its applies has completed (synchronize the streams you gave it).
 * - Tensors passed in are read during the call (host tensors, and the shapes and strides of
 *   every DLTensor) or, for device tensors, by the work queued on the stream: they must stay
 *   valid and unchanged until that work completes.
 *
 * Threads: every function may be called from any thread. Applies of one layer are serialized
 * by the library. Layers that share a workspace (the default on one device:
 * moeq_load_options.workspace) must have their device work ordered: the same stream, or a
 * stream that waits for the previous apply. Different layers with their own workspaces
 * (MOEQ_WORKSPACE_PER_LAYER) may run at once on different streams.
 */
#ifndef MOEQ_MOEQ_H_
#define MOEQ_MOEQ_H_

#include <stddef.h>
#include <stdint.h>

#include <moeq/abi.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped when a function is added; functions and struct fields are only ever appended. */
#define MOEQ_C_API_VERSION 1

typedef struct moeq_registry moeq_registry;
typedef struct moeq_model moeq_model;

/* The library's version ("0.4.0") and the plugin ABI it hosts. */
const char* moeq_version(void);
void moeq_abi_version(uint32_t* major, uint32_t* minor);

/* The message and code of this thread's last failure ("" and OK before any). The string is
 * valid until this thread's next call into the library. */
const char* moeq_last_error_message(void);
moeq_status_code moeq_last_error_code(void);

/* ---------------------------------------------------------------------- registry ---- */

#define MOEQ_REGISTRY_ALLOW_UNTRUSTED 1u /* load plugins that fail the ownership checks */
#define MOEQ_REGISTRY_NO_DEFAULT_PATH 2u /* only `plugin_dir`: no MOEQ_PLUGIN_PATH, no default */

/* Opens a registry: plugins from `plugin_dir` (NULL: none), then MOEQ_PLUGIN_PATH and the
 * directories next to libmoeq, under the trusted-loading rules. Refused files are kept with
 * their reasons (moeq_registry_refused). NOT_FOUND when no plugin loads. */
moeq_status_code moeq_registry_open(const char* plugin_dir, uint32_t flags, moeq_registry** out);
void moeq_registry_free(moeq_registry* registry); /* NULL: nothing */

size_t moeq_registry_num_plugins(const moeq_registry* registry);
/* Name of plugin i in load order, NULL when out of range; valid while the registry lives. */
const char* moeq_registry_plugin_name(const moeq_registry* registry, size_t i);
/* Files that were refused, one "path: reason" line each, "" when none. */
const char* moeq_registry_refused(const moeq_registry* registry);

/* ------------------------------------------------------------------------- load ----- */

#define MOEQ_WORKSPACE_SHARED 0    /* one workspace per device, shared by its layers (ordered) */
#define MOEQ_WORKSPACE_PER_LAYER 1 /* one workspace per layer (concurrent layers) */

typedef struct moeq_load_options {
  size_t struct_size;          /* sizeof(moeq_load_options) */
  int32_t tp_rank, tp_size;    /* tensor parallel rank and size (0, 1) */
  int32_t ep_rank, ep_size;    /* expert parallel, linear placement (0, 1) */
  DLDevice device;             /* where parameters live and apply runs ({kDLCPU, 0}) */
  const char* online_scheme;   /* NULL or "": none; "int8", "fp8-tensor", "fp8-channel", "fp8-block" */
  const char* plugin;          /* NULL or "": the registry chooses; else this plugin for every layer */
  int32_t strict;              /* 1 (default): any ledger violation fails the load */
  uint32_t threads;            /* layers loaded at once; 0: one per core, at most 8 */
  int64_t max_tokens;          /* the most tokens one apply is given; 0: each method's own pass */
  int32_t workspace;           /* MOEQ_WORKSPACE_* */
  int32_t reserved0;
} moeq_load_options;

/* Defaults as above; struct_size set. */
void moeq_load_options_init(moeq_load_options* options);

/* Loads every MoE layer of the checkpoint directory `dir` (config.json + safetensors). Fails
 * (no model) naming the layer, tensor or parameter; `options` NULL means the defaults. */
moeq_status_code moeq_model_load(moeq_registry* registry, const char* dir, const moeq_load_options* options,
                                 moeq_model** out);
void moeq_model_free(moeq_model* model); /* NULL: nothing */

/* ---------------------------------------------------------------------- layers ------ */

/* How a layer's model family scores router logits (docs/ROUTING.md). Softmax of the selected
 * top-k logits is softmax with renormalization; a sigmoid of the selected is sigmoid without. */
typedef enum moeq_scoring {
  MOEQ_SCORING_SOFTMAX = 0,
  MOEQ_SCORING_SIGMOID = 1,
  MOEQ_SCORING_SPARSEMIXER = 2,   /* PhiMoE's top-2 sparse mixer */
  MOEQ_SCORING_SQRTSOFTPLUS = 3   /* DeepSeek-V4 */
} moeq_scoring;

typedef struct moeq_layer_info {
  size_t struct_size;          /* set by the caller: sizeof(moeq_layer_info) */
  int64_t layer;               /* the model's layer number (index in model.layers.N) */
  const char* prefix;          /* "model.layers.3.mlp" */
  const char* model_type;      /* config.json model_type, e.g. "qwen3_moe" */
  const char* plugin;          /* plugin that loaded the layer */
  const char* describe_json;   /* the method's describe() object: scheme, scales, granularity */
  const char* routing_json;    /* every routing setting (scoring, renormalize, correction bias,
                                  groups, scaling, weight placement) as one JSON object */
  moeq_layer_geometry geometry; /* experts, H, I, TP/EP placement, top_k */
  DLDevice device;
  uint32_t x_dtypes;           /* MOEQ_DTYPE_BIT_* apply takes for x */
  uint32_t out_dtypes;         /* ... for out */
  size_t workspace_bytes;      /* the layer's workspace (shared or its own), 0: none */
  int64_t tokens_per_pass;     /* apply runs larger batches in passes of this many tokens */
  int32_t scoring;             /* moeq_scoring */
  int32_t renormalize;         /* 1: the selected weights are renormalized to sum 1 */
  float routed_scaling_factor;
  int32_t weight_on_input;     /* 1: the routing weight scales the expert's input (llama4) */
} moeq_layer_info;

size_t moeq_model_num_layers(const moeq_model* model);
/* `layer` indexes the loaded MoE layers in order (0 .. num_layers-1), not the model's numbers. */
moeq_status_code moeq_model_layer_info(const moeq_model* model, size_t layer, moeq_layer_info* info);

/* The model's load report as one JSON object (what `moeq load --json` prints). Writes at most
 * `capacity` bytes including the NUL; `*needed` (may be NULL) gets the full size with the NUL.
 * INVALID_ARGUMENT (nothing written but *needed) when capacity is too small. */
moeq_status_code moeq_model_report_json(const moeq_model* model, char* buffer, size_t capacity, size_t* needed);

/* --------------------------------------------------------------------- compute ------ */

/* The family's routing of M tokens with the layer's router: hidden [M, H] F32/BF16/F16 on the
 * host; topk_ids [M, top_k] I32 and topk_weights [M, top_k] F32 on the host, written. Routing
 * on a device is UNIMPLEMENTED (route on the host, or with the engine's own router). */
moeq_status_code moeq_model_route(const moeq_model* model, size_t layer, const DLTensor* hidden, const DLTensor* topk_ids,
                                  const DLTensor* topk_weights);

/* out [M, H] = the layer's experts on x [M, H] with the routing (global expert ids; experts not
 * on this EP rank contribute nothing; with TP, this rank's partial sum). Every tensor on the
 * layer's device, contiguous rows, dtypes as moeq_layer_info declares (topk_ids I32,
 * topk_weights F32). On a CUDA layer the work is queued on `stream` (a CUstream/cudaStream_t;
 * NULL = the legacy default stream) and nothing is allocated or synchronized, so the call may
 * be captured in a CUDA graph; on the CPU it runs to completion and `stream` is ignored. */
moeq_status_code moeq_model_apply(const moeq_model* model, size_t layer, const DLTensor* x, const DLTensor* topk_ids,
                                  const DLTensor* topk_weights, const DLTensor* out, void* stream);

/* Local expert `local_expert`'s weights as the method holds them, dequantized to float on the
 * host: w13 [2 * I_tp, H] (gate rows, then up rows) and w2 [H, I_tp], I_tp the geometry's
 * intermediate_size_per_partition. `w13_count`/`w2_count` are the buffers' element counts,
 * checked. UNIMPLEMENTED when the plugin does not expose them. */
moeq_status_code moeq_model_dequantize_expert(const moeq_model* model, size_t layer, int64_t local_expert, float* w13,
                                              size_t w13_count, float* w2, size_t w2_count);

#ifdef __cplusplus
}
#endif

#endif /* MOEQ_MOEQ_H_ */
