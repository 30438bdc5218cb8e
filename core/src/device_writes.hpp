// Parameters on a CUDA device (host services, host_services.cpp): device allocations in the
// primary context and device-to-host reads. The writer that carries copy_to_param /
// param_fill bytes to the device is moeq/device_staging.hpp.
#pragma once
#include <moeq/cuda_driver.hpp>
#include <moeq/device_staging.hpp>

#include <cstddef>
#include <string>

namespace moeq::host {

// cuMemAlloc on device `ordinal`; Error(OUT_OF_MEMORY / UNAVAILABLE) naming `what`.
cuda::CUdeviceptr device_allocate(int ordinal, std::size_t bytes, const std::string& what);
void device_release(int ordinal, cuda::CUdeviceptr ptr) noexcept;
// Device-to-host read on a stream of its own, waited for (read_param, scale checks).
void device_read(int ordinal, void* dst, cuda::CUdeviceptr src, std::size_t bytes);

}  // namespace moeq::host
