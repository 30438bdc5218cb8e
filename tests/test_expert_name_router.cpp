// The naming-family table: every family, every suffix, routers, and what is not MoE.
#include <moeq/expert_name_router.hpp>

#include <doctest/doctest.h>

using namespace moeq;

TEST_CASE("per-expert gate/up/down_proj route with any suffix") {
  RoutedName r = route_tensor_name("model.layers.12.mlp.experts.37.gate_proj.weight_scale");
  CHECK(r.role == TensorRole::kExpert);
  CHECK(r.family == "per_expert_proj");
  CHECK(r.layer == 12);
  CHECK(r.layer_prefix == "model.layers.12.mlp");
  CHECK(r.expert == 37);
  CHECK(r.projection == Projection::kW1);
  CHECK(r.suffix == "weight_scale");
  CHECK(r.experts_module == "model.layers.12.mlp.experts");
  CHECK(route_tensor_name("model.layers.0.mlp.experts.1.up_proj.weight").projection == Projection::kW3);
  CHECK(route_tensor_name("model.layers.0.mlp.experts.1.down_proj.input_scale").projection == Projection::kW2);
  CHECK(route_tensor_name("model.layers.0.mlp.experts.1.down_proj.weight_scale_inv").suffix == "weight_scale_inv");
}

TEST_CASE("Mixtral w1/w3/w2 names map gate, up and down") {
  RoutedName w1 = route_tensor_name("model.layers.3.block_sparse_moe.experts.5.w1.weight");
  RoutedName w3 = route_tensor_name("model.layers.3.block_sparse_moe.experts.5.w3.weight");
  RoutedName w2 = route_tensor_name("model.layers.3.block_sparse_moe.experts.5.w2.weight");
  CHECK(w1.projection == Projection::kW1);
  CHECK(w3.projection == Projection::kW3);
  CHECK(w2.projection == Projection::kW2);
  CHECK(w1.family == "per_expert_w");
  CHECK(w1.expert == 5);
}

TEST_CASE("DeepSeek-V4 ffn.experts .scale is the weight_scale_inv multiplier") {
  RoutedName r = route_tensor_name("layers.4.ffn.experts.9.w2.scale");
  CHECK(r.role == TensorRole::kExpert);
  CHECK(r.layer == 4);
  CHECK(r.layer_prefix == "layers.4.ffn");
  CHECK(r.projection == Projection::kW2);
  CHECK(r.suffix == "weight_scale_inv");
}

TEST_CASE("granite fused weight_scale [E,2I,1] is routed like the fused weight") {
  RoutedName w = route_tensor_name("model.layers.2.block_sparse_moe.input_linear.weight");
  RoutedName s = route_tensor_name("model.layers.2.block_sparse_moe.input_linear.weight_scale");
  RoutedName d = route_tensor_name("model.layers.2.block_sparse_moe.output_linear.weight_scale");
  for (const RoutedName* r : {&w, &s}) {
    CHECK(r->role == TensorRole::kExpert);
    CHECK(r->family == "granite_fused");
    CHECK(r->projection == Projection::kW13);
    CHECK(r->expert == -1);
  }
  CHECK(s.suffix == "weight_scale");
  CHECK(d.projection == Projection::kW2);
  CHECK(d.suffix == "weight_scale");
}

TEST_CASE("transformers-v5 fused experts and ModelOpt sibling scales") {
  RoutedName gu = route_tensor_name("model.layers.1.mlp.experts.gate_up_proj");
  CHECK(gu.role == TensorRole::kExpert);
  CHECK(gu.projection == Projection::kW13);
  CHECK(gu.suffix == "weight");
  CHECK(gu.expert == -1);
  CHECK(gu.experts_module == "model.layers.1.mlp.experts");
  RoutedName dp = route_tensor_name("model.layers.1.mlp.experts.down_proj_weight_scale");
  CHECK(dp.projection == Projection::kW2);
  CHECK(dp.suffix == "weight_scale");
  // A name with an extra suffix after the fused parameter is not silently the weight (vLLM #57473).
  CHECK(route_tensor_name("model.layers.1.mlp.experts.gate_up_proj.weight.weight").role != TensorRole::kExpert);
}

TEST_CASE("per-expert fused gate_up_proj is split later like the all-expert one") {
  RoutedName r = route_tensor_name("model.layers.0.mlp.experts.6.gate_up_proj.weight");
  CHECK(r.projection == Projection::kW13);
  CHECK(r.expert == 6);
}

TEST_CASE("routers are found for every family") {
  CHECK(route_tensor_name("model.layers.0.mlp.gate.weight").role == TensorRole::kRouterWeight);
  CHECK(route_tensor_name("model.layers.0.block_sparse_moe.gate.weight").role == TensorRole::kRouterWeight);
  CHECK(route_tensor_name("model.layers.0.block_sparse_moe.router.layer.weight").role == TensorRole::kRouterWeight);
  CHECK(route_tensor_name("model.layers.0.mlp.gate.e_score_correction_bias").role == TensorRole::kRouterBias);
  CHECK(route_tensor_name("layers.0.ffn.gate.bias").role == TensorRole::kRouterBias);
}

TEST_CASE("non-expert tensors are not MoE, not errors") {
  for (const char* n : {"model.embed_tokens.weight", "lm_head.weight", "model.layers.0.self_attn.q_proj.weight",
                        "model.layers.0.self_attn.k_proj.k_scale", "model.layers.0.mlp.gate_proj.weight",
                        "model.layers.0.mlp.shared_experts.gate_proj.weight",
                        "model.layers.0.mlp.shared_expert_gate.weight", "model.layers.0.input_layernorm.weight"}) {
    CAPTURE(n);
    CHECK(route_tensor_name(n).role == TensorRole::kNotMoe);
  }
}

TEST_CASE("a tensor under an experts module that matches no family is unknown") {
  RoutedName r = route_tensor_name("model.layers.0.mlp.experts.foo.weight");
  CHECK(r.role == TensorRole::kUnknownExpert);
  CHECK(r.layer == 0);
  CHECK(route_tensor_name("model.layers.0.mlp.experts.3.gate_proj").role == TensorRole::kUnknownExpert);
  CHECK(route_tensor_name("model.layers.0.mlp.experts.3.left_proj.weight").role == TensorRole::kUnknownExpert);
}

TEST_CASE("experts 1 and 10 are different experts") {
  CHECK(route_tensor_name("model.layers.0.mlp.experts.1.gate_proj.weight").expert == 1);
  CHECK(route_tensor_name("model.layers.0.mlp.experts.10.gate_proj.weight").expert == 10);
}
