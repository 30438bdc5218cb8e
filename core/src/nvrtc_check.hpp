// NVRTC call check, the sibling of MOEQ_CU_CHECK: throws moeq::Error(INTERNAL) carrying
// file:line, the call as written and NVRTC's text for the result. Compile errors are not
// checked through it: they carry the program log instead (jit_compiler.cpp).
#pragma once
#include <moeq/error.hpp>

#include <nvrtc.h>

#include <string>

#define MOEQ_NVRTC_CHECK(call)                                                                  \
  do {                                                                                          \
    const nvrtcResult moeq_nvrtc_result_ = (call);                                              \
    if (moeq_nvrtc_result_ != NVRTC_SUCCESS)                                                    \
      ::moeq::fail(MOEQ_STATUS_CODE_INTERNAL, std::string(__FILE__) + ":" + std::to_string(__LINE__) + \
                                                  ": " #call " failed: " +                     \
                                                  nvrtcGetErrorString(moeq_nvrtc_result_));     \
  } while (0)
