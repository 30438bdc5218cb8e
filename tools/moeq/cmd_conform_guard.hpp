// `moeq conform`: fenced memory for the buffers the checks hand a plugin (apply's x, topk_ids,
// topk_weights and out; dequantize_expert's w13 and w2; weight_loader's skip_reason). Each sits
// between canaries, and beyond the canaries lie inaccessible pages: a write just past either
// end is found when the call returns (damage()), one further away stops the child at once, and
// the fault handler names the buffer before the process dies.
#pragma once
#include <cstddef>
#include <string>

namespace moeq::cli::conform {

class GuardedBuffer {
 public:
  // `call` and `name` say whose buffer it is in messages ("apply", "out"). Zero-filled.
  GuardedBuffer(std::string call, std::string name, size_t bytes);
  ~GuardedBuffer();
  GuardedBuffer(const GuardedBuffer&) = delete;
  GuardedBuffer& operator=(const GuardedBuffer&) = delete;

  void* data() const { return data_; }
  size_t size() const { return bytes_; }
  template <class T>
  T* as() const { return static_cast<T*>(data_); }
  // Empty when both canaries are intact, else "apply wrote 4 bytes past the end of out, from
  // byte 0 after it".
  std::string damage() const;

 private:
  std::string call_, name_;
  std::byte* map_ = nullptr;
  size_t map_bytes_ = 0;
  std::byte* open_begin_ = nullptr;  // the accessible pages: canary, data, canary
  std::byte* open_end_ = nullptr;
  void* data_ = nullptr;
  size_t bytes_ = 0;
  int slot_ = -1;  // in the fault handler's table
};

// In a check's child: on SIGSEGV or SIGBUS at an address in a guard page, writes one line
// "guard\t<what happened>\n" to `report_fd`, then lets the signal kill the process as before.
void install_guard_fault_handler(int report_fd);

}  // namespace moeq::cli::conform
