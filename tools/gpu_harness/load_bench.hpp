// `moeq bench load DIR`: how fast a checkpoint reaches device memory, on device 0, against
// the pinned and pageable host-to-device rates measured in the same run:
//   raw   every tensor of the safetensors files, mapped file (page cache) -> pinned staging
//         chunks filled by reader threads -> async copies on per-thread streams -> device;
//   real  strict load through the plugins (the ledger on, as `moeq load`), then every final
//         layer parameter uploaded through the same pipeline; peak device memory next to the
//         final parameter size (the online-quant goal: final + one bf16 expert + 64 MiB);
//   device the same strict load with the layers on cuda:0: copy_to_param carries every row
//         through pinned staging to the device parameters, process_after_loading prepares
//         the kernels (twice: the second pass with the JIT cache warm);
//   cold  (--cold) the files dropped from the page cache, the disk's raw read rate, and the
//         device load again from the disk, with the bytes it read (pages resident after).
// Device bytes are downloaded and compared with the host bytes before any figure is printed.
#pragma once
#include <moeq/loader.hpp>
#include <moeq/registry.hpp>

#include <cstddef>
#include <filesystem>
#include <iosfwd>
#include <string>

namespace moeq::gpu_harness {

struct LoadBenchOptions {
  std::filesystem::path dir;
  LoadOptions load;          // placement, pin, online scheme; strict is forced on
  unsigned threads = 0;      // reader threads; 0 = min(12, cores), the best of 8/12/16 on the H200
  int repeat = 3;            // timed passes of each upload (median reported)
  std::size_t chunk_bytes = std::size_t{16} << 20;
  unsigned chunks = 0;       // staging chunks; 0 = max(8, 2 x threads)
  std::size_t floor_bytes = std::size_t{256} << 20;  // buffer of the H2D floors
  bool json = false;
  // After the warm figures: the files dropped from the page cache, the disk's own read rate
  // (O_DIRECT, every file once), then the strict load onto cuda:0 from the cold cache.
  bool cold = false;
};

// Prints a table (or one JSON object) to `out`. Returns 0 when every device byte matched,
// 1 on a mismatch. Throws moeq::Error(UNAVAILABLE) without a CUDA driver or device, and
// moeq::Error naming the layer/tensor when the strict load fails.
int run_load_bench(const LoadBenchOptions& options, const Registry& registry, std::ostream& out);

}  // namespace moeq::gpu_harness
