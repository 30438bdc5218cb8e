// Copies into pinned staging, whose bytes only the copy engine reads afterwards: on x86-64 with
// AVX2 the stores are non-temporal (they bypass the caches, so no line is read for ownership
// first and the copy costs a read and a write of memory per byte, not two reads and a write),
// optionally checking float elements for NaN/Inf from the registers the copy already holds.
// Elsewhere (another CPU, MOEQ_LOAD_COPY=libc) they are memcpy and first_non_finite.
#pragma once
#include <moeq/dtype.hpp>

#include <cstddef>
#include <cstdint>

namespace moeq {

// Copies `bytes` from `src` to `dst` (not overlapping). The stores may be non-temporal: they are
// fenced before the call returns, so a copy engine started afterwards sees them.
void stream_copy(void* dst, const void* src, std::size_t bytes);

// Copies `count` elements of `dtype` like stream_copy and returns the index of the first
// non-finite one (an all-ones exponent: NaN or infinity), or -1. Every element is copied either
// way (a `dst` off its element alignment takes memcpy and the scan); integer dtypes are copied
// and never flagged.
int64_t stream_copy_checking(void* dst, const void* src, int64_t count, DType dtype);

// Whether the non-temporal AVX2 path is in use (the CPU has it and MOEQ_LOAD_COPY is not "libc").
bool stream_copy_accelerated();

}  // namespace moeq
