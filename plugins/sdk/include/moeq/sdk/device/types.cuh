// Device headers of the plugin SDK (NVRTC, no toolkit header needed): the integer names the
// others use. A plugin's kernels include them by these paths; the host's JIT finds them because
// moeq::sdk::embedded_kernel_headers() lists them after the plugin's own KERNELS files.
#pragma once

namespace moeq::sdk::device {

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

}  // namespace moeq::sdk::device
