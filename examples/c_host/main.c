/* moeq from C: open a registry, load a checkpoint directory, print every MoE layer, route
 * and apply random tokens on the CPU, print a checksum of the outputs.
 *
 *   moeq_c_host CHECKPOINT_DIR [PLUGIN_DIR] [TOKENS]
 *
 * Without PLUGIN_DIR the plugins come from MOEQ_PLUGIN_PATH and the directories next to
 * libmoeq_c.so (<prefix>/lib/moeq/plugins when installed). Exit 1 on any failure, printing
 * the library's message. */
#include <moeq/moeq.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int fail(const char* what) {
  fprintf(stderr, "moeq_c_host: %s failed (status %d): %s\n", what, (int)moeq_last_error_code(),
          moeq_last_error_message());
  return 1;
}

/* Seeded standard normal values (xorshift64* and Box-Muller): the same tokens on every run. */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double uniform(void) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return ((rng_state * 0x2545F4914F6CDD1Dull) >> 11) * (1.0 / 9007199254740992.0);
}
static float normal(void) {
  const double u = uniform() + 1e-12, v = uniform();
  return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

static const char* scoring_name(int32_t s) {
  switch (s) {
    case MOEQ_SCORING_SOFTMAX: return "softmax";
    case MOEQ_SCORING_SIGMOID: return "sigmoid";
    case MOEQ_SCORING_SPARSEMIXER: return "sparsemixer";
    case MOEQ_SCORING_SQRTSOFTPLUS: return "sqrtsoftplus";
    default: return "?";
  }
}

/* A compact row-major DLTensor over host memory. */
static DLTensor host_tensor(void* data, int64_t* shape, int64_t* strides, uint8_t code, uint8_t bits) {
  DLTensor t;
  t.data = data;
  t.device.device_type = kDLCPU;
  t.device.device_id = 0;
  t.ndim = 2;
  t.dtype.code = code;
  t.dtype.bits = bits;
  t.dtype.lanes = 1;
  t.shape = shape;
  strides[0] = shape[1];
  strides[1] = 1;
  t.strides = strides;
  t.byte_offset = 0;
  return t;
}

static int run_layer(const moeq_model* model, size_t li, int64_t m, double* checksum) {
  moeq_layer_info info = {0};
  info.struct_size = sizeof info;
  if (moeq_model_layer_info(model, li, &info) != MOEQ_STATUS_CODE_OK) return fail("moeq_model_layer_info");
  const moeq_layer_geometry* g = &info.geometry;
  printf("layer %zu: %s (model layer %lld, %s), plugin %s\n", li, info.prefix, (long long)info.layer, info.model_type,
         info.plugin);
  printf("  experts %lld (local %lld from %lld), H %lld, I %lld (I/tp %lld), top-%d; %s%s, scaling %g%s\n",
         (long long)g->num_experts, (long long)g->num_local_experts, (long long)g->first_local_expert,
         (long long)g->hidden_size, (long long)g->intermediate_size, (long long)g->intermediate_size_per_partition,
         g->top_k, scoring_name(info.scoring), info.renormalize ? ", renormalized" : "",
         (double)info.routed_scaling_factor, info.weight_on_input ? ", weight on the input" : "");
  printf("  apply takes x%s%s%s, writes out%s%s%s; %lld tokens a pass, workspace %zu bytes\n",
         info.x_dtypes & MOEQ_DTYPE_BIT_F32 ? " f32" : "", info.x_dtypes & MOEQ_DTYPE_BIT_BF16 ? " bf16" : "",
         info.x_dtypes & MOEQ_DTYPE_BIT_F16 ? " f16" : "", info.out_dtypes & MOEQ_DTYPE_BIT_F32 ? " f32" : "",
         info.out_dtypes & MOEQ_DTYPE_BIT_BF16 ? " bf16" : "", info.out_dtypes & MOEQ_DTYPE_BIT_F16 ? " f16" : "",
         (long long)info.tokens_per_pass, info.workspace_bytes);
  printf("  method %s\n  routing %s\n", info.describe_json, info.routing_json);
  if (info.device.device_type != kDLCPU) {
    printf("  (not on the CPU: not run here)\n");
    return 0;
  }
  if (!(info.x_dtypes & MOEQ_DTYPE_BIT_F32) || !(info.out_dtypes & MOEQ_DTYPE_BIT_F32)) {
    fprintf(stderr, "moeq_c_host: layer %s does not take F32 x and out on the CPU\n", info.prefix);
    return 1;
  }
  const int64_t h = g->hidden_size, k = g->top_k;
  float* x = malloc(sizeof(float) * (size_t)(m * h));
  float* out = malloc(sizeof(float) * (size_t)(m * h));
  int32_t* ids = malloc(sizeof(int32_t) * (size_t)(m * k));
  float* weights = malloc(sizeof(float) * (size_t)(m * k));
  int rc = 0;
  if (!x || !out || !ids || !weights) {
    fprintf(stderr, "moeq_c_host: out of memory\n");
    rc = 1;
  } else {
    for (int64_t i = 0; i < m * h; ++i) x[i] = normal();
    int64_t xs[2] = {m, h}, ks[2] = {m, k}, xst[2], ost[2], ist[2], wst[2];
    const DLTensor tx = host_tensor(x, xs, xst, kDLFloat, 32), to = host_tensor(out, xs, ost, kDLFloat, 32);
    const DLTensor ti = host_tensor(ids, ks, ist, kDLInt, 32), tw = host_tensor(weights, ks, wst, kDLFloat, 32);
    if (moeq_model_route(model, li, &tx, &ti, &tw) != MOEQ_STATUS_CODE_OK) {
      rc = fail("moeq_model_route");
    } else if (moeq_model_apply(model, li, &tx, &ti, &tw, &to, NULL) != MOEQ_STATUS_CODE_OK) {
      rc = fail("moeq_model_apply");
    } else {
      double sum = 0, abs_sum = 0;
      for (int64_t i = 0; i < m * h; ++i) {
        sum += out[i];
        abs_sum += fabs(out[i]);
      }
      printf("  %lld tokens: token 0 -> experts", (long long)m);
      for (int64_t j = 0; j < k; ++j) printf(" %d (%.4f)", ids[j], (double)weights[j]);
      printf("; out sum %.6e, sum |out| %.6e\n", sum, abs_sum);
      if (!isfinite(sum) || abs_sum == 0) {
        fprintf(stderr, "moeq_c_host: layer %s gave %s\n", info.prefix, abs_sum == 0 ? "all zeros" : "a non-finite value");
        rc = 1;
      }
      *checksum += abs_sum;
    }
  }
  free(x);
  free(out);
  free(ids);
  free(weights);
  return rc;
}

int main(int argc, char** argv) {
  if (argc < 2 || argc > 4) {
    fprintf(stderr, "usage: %s CHECKPOINT_DIR [PLUGIN_DIR] [TOKENS]\n", argv[0]);
    return 2;
  }
  const int64_t tokens = argc > 3 ? atoll(argv[3]) : 16;
  if (tokens < 1) {
    fprintf(stderr, "moeq_c_host: TOKENS must be a positive integer, found '%s'\n", argv[3]);
    return 2;
  }
  uint32_t major = 0, minor = 0;
  moeq_abi_version(&major, &minor);
  printf("libmoeq %s, plugin ABI %u.%u, C API %d\n", moeq_version(), major, minor, MOEQ_C_API_VERSION);

  moeq_registry* registry = NULL;
  if (moeq_registry_open(argc > 2 && argv[2][0] ? argv[2] : NULL, 0, &registry) != MOEQ_STATUS_CODE_OK)
    return fail("moeq_registry_open");
  printf("plugins:");
  for (size_t i = 0; i < moeq_registry_num_plugins(registry); ++i) printf(" %s", moeq_registry_plugin_name(registry, i));
  printf("\n");

  moeq_load_options options;
  moeq_load_options_init(&options);
  moeq_model* model = NULL;
  const moeq_status_code loaded = moeq_model_load(registry, argv[1], &options, &model);
  moeq_registry_free(registry); /* the model keeps what it needs */
  if (loaded != MOEQ_STATUS_CODE_OK) return fail("moeq_model_load");

  int rc = 0;
  double checksum = 0;
  const size_t layers = moeq_model_num_layers(model);
  printf("%s: %zu MoE layers\n", argv[1], layers);
  for (size_t li = 0; li < layers && rc == 0; ++li) rc = run_layer(model, li, tokens, &checksum);
  if (rc == 0) printf("checksum %.6e\n", checksum);
  moeq_model_free(model);
  return rc;
}
