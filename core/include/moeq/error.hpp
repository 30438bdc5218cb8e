// One exception type inside the core and the plugins; it stops at the ABI edge and becomes a
// status. Messages name the file, the tensor, what was expected and what was found.
#pragma once
#include <moeq/abi.h>

#include <stdexcept>
#include <string>

namespace moeq {

class Error : public std::runtime_error {
 public:
  Error(moeq_status_code code, std::string message)
      : std::runtime_error(std::move(message)), code_(code) {}
  moeq_status_code code() const { return code_; }

 private:
  moeq_status_code code_;
};

[[noreturn]] inline void fail(moeq_status_code code, std::string message) {
  throw Error(code, std::move(message));
}
[[noreturn]] inline void fail(std::string message) {
  throw Error(MOEQ_STATUS_CODE_INVALID_ARGUMENT, std::move(message));
}

}  // namespace moeq

// Host-side check: throws moeq::Error(INVALID_ARGUMENT) with the message when cond is false.
#define MOEQ_CHECK(cond, msg)                 \
  do {                                        \
    if (!(cond)) ::moeq::fail(std::string(msg)); \
  } while (0)
