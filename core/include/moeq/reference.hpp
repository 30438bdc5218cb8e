// The core's float reference: routing and the MoE forward on float weights, with the
// activation-quantization primitives of docs/MOE_SEMANTICS.md §5 as options. It names no
// quantization format: callers hand it dequantized float weights.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace moeq::ref {

// ---------------------------------------------------------------- routing (§7.1)
// kSparseMixer: PhiMoE's top-2 sparse mixer (inference form): for each of the two picks, the
// softmax over the logits within 2 * eps (relative) of the best remaining one, taken at the pick.
// kSqrtSoftplus: sqrt(softplus(logit)) (DeepSeek-V4).
enum class Scoring { kSoftmax, kSigmoid, kSparseMixer, kSqrtSoftplus };
// A group's score for grouped top-k: kAuto = the sum of the top-2 selection scores when there is
// a correction bias, else the group's max (vLLM's rule); the families name theirs.
enum class GroupScore { kAuto, kMax, kTop2Sum };

struct RoutingOptions {
  int top_k = 2;
  bool renormalize = true;
  Scoring scoring = Scoring::kSoftmax;
  std::vector<float> correction_bias;  // empty = none, else [E]: selects ids, weights stay unbiased
  int n_group = 0;                     // > 0: grouped top-k (DeepSeek-V3)
  int topk_group = 0;
  GroupScore group_score = GroupScore::kAuto;
  float routed_scaling_factor = 1.0f;
  float sparsemixer_eps = 0.01f;       // kSparseMixer only
};

struct Routing {
  int64_t num_tokens = 0;
  int64_t top_k = 0;
  std::vector<int32_t> ids;     // [M, k] global expert ids
  std::vector<float> weights;   // [M, k]
};

// logits [M, E] row-major. Throws moeq::Error on inconsistent options.
Routing route(std::span<const float> logits, int64_t num_tokens, int64_t num_experts,
              const RoutingOptions& options);

// -------------------------------------------------- activation quantization (§7.3)
enum class ActQuant {
  kNone,
  kFp8PerToken,          // s_m = max(amax_row / 448, 1 / (448 * 512))
  kFp8PerGroup,          // s = max(amax_group, 1e-10) / 448, groups of group_size along a row
  kFp8PerTensorDynamic,  // s = amax(all) / 448
  kFp8PerTensorStatic,   // s given
};

struct ActQuantSpec {
  ActQuant kind = ActQuant::kNone;
  int64_t group_size = 128;
  float static_scale = 1.0f;
};

// q = fp8_e4m3(clamp(x / s, -448, 448)), round to nearest even.
uint8_t fp8_quantize(float x, float scale);
float fp8_per_token_scale(std::span<const float> row);
float fp8_group_scale(std::span<const float> group);

// Quantize x [rows, cols] with the primitive and write the dequantized values q * s to out
// (same size as x; may alias x).
void fake_quant(std::span<const float> x, int64_t rows, int64_t cols, const ActQuantSpec& spec,
                std::span<float> out);

// ---------------------------------------------------------------- MoE forward (§7.4)
// Float weights of the experts one rank holds, already dequantized and sharded.
struct ExpertWeights {
  int64_t num_experts = 0;    // local experts
  int64_t first_expert = 0;   // global id of local expert 0 (EP linear placement)
  int64_t hidden = 0;         // H
  int64_t intermediate = 0;   // I of this shard
  std::vector<float> w13;     // [E, 2I, H]: gate rows [0, I), up rows [I, 2I)
  std::vector<float> w2;      // [E, H, I]
};

struct MoeOptions {
  ActQuantSpec a1;  // quantization of x before GEMM1
  ActQuantSpec a2;  // quantization of silu(gate) * up before GEMM2
};

float silu(float x);

// out [M, H] = sum_j w[m,j] * W2_e (a2(silu(W1_e a1(x_m)) * W3_e a1(x_m))), computed in
// double-accumulated float; tokens routed to non-local experts contribute nothing.
std::vector<float> moe_forward(const ExpertWeights& weights, std::span<const float> x,
                               int64_t num_tokens, const Routing& routing,
                               const MoeOptions& options);

// ||a - ref|| / ||ref|| (0 when both are zero).
double relative_l2(std::span<const float> a, std::span<const float> ref);

}  // namespace moeq::ref
