// Embedded by moeq_add_plugin(KERNELS) into every conform test plugin; tests/test_conform.cpp
// checks that the plugin hands back these exact bytes. Not compiled: the test plugins run on
// the CPU. The odd characters are on purpose: "quotes", a back\slash, )raw" delimiters, tabs	.
#pragma once

extern "C" __global__ void conform_scale(float* x, float s, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] *= s;
}
