#include <moeq/error.hpp>
#include <moeq/stream_copy.hpp>

#include <cstdlib>
#include <cstring>
#include <string_view>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define MOEQ_STREAM_COPY_AVX2 1
#endif

namespace moeq {

namespace {

bool decide() {
#ifdef MOEQ_STREAM_COPY_AVX2
  if (const char* v = std::getenv("MOEQ_LOAD_COPY")) {
    const std::string_view s = v;
    if (s == "libc") return false;
    if (!s.empty() && s != "stream")
      fail("MOEQ_LOAD_COPY must be 'stream' or 'libc', found '" + std::string(s) + "'");
  }
  return __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}

#ifdef MOEQ_STREAM_COPY_AVX2
// The exponent mask of an element size in a 256-bit lane pattern; `kind` 0 copies only.
enum Kind { kCopy, kByte, kHalf, kWord };

// Copies whole 32-byte vectors from `s` to 32-aligned `d` with streaming stores; with a check,
// ORs each vector's "all exponent bits set" lanes into the result (nonzero: some element is not
// finite somewhere in the range).
template <Kind K>
__attribute__((target("avx2"))) bool copy_vectors(std::byte* d, const std::byte* s, std::size_t vectors, uint32_t mask) {
  __m256i bad = _mm256_setzero_si256();
  const __m256i m8 = _mm256_set1_epi8(static_cast<char>(mask & 0xff));
  const __m256i m16 = _mm256_set1_epi16(static_cast<short>(mask & 0xffff));
  const __m256i m32 = _mm256_set1_epi32(static_cast<int>(mask));
  for (std::size_t i = 0; i < vectors; ++i) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 32 * i));
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + 32 * i), v);
    if constexpr (K == kByte) bad = _mm256_or_si256(bad, _mm256_cmpeq_epi8(_mm256_and_si256(v, m8), m8));
    if constexpr (K == kHalf) bad = _mm256_or_si256(bad, _mm256_cmpeq_epi16(_mm256_and_si256(v, m16), m16));
    if constexpr (K == kWord) bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(_mm256_and_si256(v, m32), m32));
  }
  return !_mm256_testz_si256(bad, bad);
}

__attribute__((target("avx2"))) void fence() { _mm_sfence(); }

// The copy of `bytes` (a whole number of `esize` elements, `dst` aligned to it): a head up to
// 32-byte alignment of dst and a tail by memcpy, the rest in blocks of 64 KiB of vectors. With a
// check, returns the byte offset of the first block that holds a non-finite element (its head,
// vectors or tail), else SIZE_MAX.
template <Kind K>
std::size_t copy_all(std::byte* dst, const std::byte* src, std::size_t bytes, uint32_t mask, DType dtype,
                     std::size_t esize) {
  std::size_t first_bad = SIZE_MAX;
  auto check_scalar = [&](std::size_t at, std::size_t n) {
    if (K != kCopy && first_bad == SIZE_MAX && first_non_finite(src + at, n / esize, dtype) >= 0) first_bad = at;
  };
  const std::size_t head = std::min(bytes, (32 - reinterpret_cast<std::uintptr_t>(dst) % 32) % 32);
  std::memcpy(dst, src, head);
  check_scalar(0, head);
  constexpr std::size_t kBlock = std::size_t{64} << 10;
  std::size_t at = head;
  while (bytes - at >= 32) {
    const std::size_t n = std::min(kBlock, (bytes - at) / 32 * 32);
    if (copy_vectors<K>(dst + at, src + at, n / 32, mask) && first_bad == SIZE_MAX) first_bad = at;
    at += n;
  }
  std::memcpy(dst + at, src + at, bytes - at);
  check_scalar(at, bytes - at);
  fence();
  return first_bad;
}
#endif

}  // namespace

bool stream_copy_accelerated() {
  static const bool on = decide();
  return on;
}

void stream_copy(void* dst, const void* src, std::size_t bytes) {
#ifdef MOEQ_STREAM_COPY_AVX2
  if (stream_copy_accelerated() && bytes >= 4096) {
    copy_all<kCopy>(static_cast<std::byte*>(dst), static_cast<const std::byte*>(src), bytes, 0, DType::U8, 1);
    return;
  }
#endif
  std::memcpy(dst, src, bytes);
}

int64_t stream_copy_checking(void* dst, const void* src, int64_t count, DType dtype) {
  const std::size_t esize = dtype_size(dtype), bytes = static_cast<std::size_t>(count) * esize;
  const auto* s = static_cast<const std::byte*>(src);
  auto* d = static_cast<std::byte*>(dst);
#ifdef MOEQ_STREAM_COPY_AVX2
  // NOTE: the vectors' lanes hold whole elements only when dst sits on an element.
  if (stream_copy_accelerated() && bytes >= 4096 && reinterpret_cast<std::uintptr_t>(d) % esize == 0) {
    std::size_t block = SIZE_MAX;
    switch (dtype) {
      case DType::F8_E4M3: block = copy_all<kByte>(d, s, bytes, 0x7f, dtype, esize); break;
      case DType::BF16: block = copy_all<kHalf>(d, s, bytes, 0x7f80, dtype, esize); break;
      case DType::F16: block = copy_all<kHalf>(d, s, bytes, 0x7c00, dtype, esize); break;
      case DType::F32: block = copy_all<kWord>(d, s, bytes, 0x7f800000u, dtype, esize); break;
      default: copy_all<kCopy>(d, s, bytes, 0, dtype, esize); return -1;
    }
    if (block == SIZE_MAX) return -1;
    // The flagged block holds the first non-finite element: found there, from the source.
    const int64_t in = first_non_finite(s + block, (bytes - block) / esize, dtype);
    return in < 0 ? -1 : static_cast<int64_t>(block / esize) + in;
  }
#endif
  std::memcpy(d, s, bytes);
  return first_non_finite(s, static_cast<std::size_t>(count), dtype);
}

}  // namespace moeq
