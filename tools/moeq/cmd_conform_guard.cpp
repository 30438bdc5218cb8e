#include "cmd_conform_guard.hpp"

#include <moeq/error.hpp>

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <mutex>

namespace moeq::cli::conform {

namespace {

constexpr size_t kCanary = 64;          // bytes of pattern on each side, at least
constexpr size_t kAlign = 64;           // of the data pointer, as vector code may assume
constexpr std::byte kPattern{0xA5};

// What the fault handler knows of each live buffer. Written under g_table_mutex, read by the
// handler without it: `used` is stored last on registration and first on removal.
struct GuardSlot {
  std::atomic<bool> used{false};
  uintptr_t before_lo = 0, before_hi = 0;  // the guard page before the canary
  uintptr_t after_lo = 0, after_hi = 0;    // the guard page after it
  uintptr_t data_lo = 0, data_hi = 0;
  char call[32] = {};
  char name[32] = {};
};
constexpr int kSlots = 256;
std::array<GuardSlot, kSlots> g_table;
std::mutex g_table_mutex;
int g_report_fd = -1;

size_t page_size() {
  static const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  return page;
}

void copy_label(char (&to)[32], const std::string& from) {
  const size_t n = std::min(from.size(), sizeof(to) - 1);
  std::memcpy(to, from.data(), n);
  to[n] = '\0';
}

// Async-signal-safe formatting for the handler: appends to a fixed buffer.
struct Line {
  char text[256];
  size_t n = 0;
  void add(const char* s) {
    while (*s && n + 1 < sizeof(text)) text[n++] = *s++;
  }
  void add(uintptr_t v) {
    char digits[24];
    int d = 0;
    do {
      digits[d++] = static_cast<char>('0' + v % 10);
      v /= 10;
    } while (v > 0 && d < 24);
    while (d > 0 && n + 1 < sizeof(text)) text[n++] = digits[--d];
  }
};

void on_fault(int, siginfo_t* info, void*) {
  const auto at = reinterpret_cast<uintptr_t>(info->si_addr);
  for (const GuardSlot& s : g_table) {
    if (!s.used.load(std::memory_order_acquire)) continue;
    const bool after = at >= s.after_lo && at < s.after_hi;
    const bool before = at >= s.before_lo && at < s.before_hi;
    if (!after && !before) continue;
    Line l;
    l.add("guard\t");
    l.add(s.call);
    l.add(" reached byte ");
    l.add(after ? at - s.data_hi : s.data_lo - at);
    l.add(after ? " past the end of " : " before the start of ");
    l.add(s.name);
    l.add(" (a guard page beyond its canary): an out-of-bounds access\n");
    if (g_report_fd >= 0) {
      const ssize_t written = ::write(g_report_fd, l.text, l.n);
      (void)written;  // nothing to do about a failed report from a dying process
    }
    break;
  }
  // SA_RESETHAND restored the default action: the access faults again and the signal ends the
  // process, as the runner expects of a crash.
}

}  // namespace

GuardedBuffer::GuardedBuffer(std::string call, std::string name, size_t bytes)
    : call_(std::move(call)), name_(std::move(name)), bytes_(bytes) {
  const size_t page = page_size();
  const size_t open = (bytes + 2 * kCanary + kAlign + page - 1) / page * page;
  map_bytes_ = open + 2 * page;
  void* m = ::mmap(nullptr, map_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED)
    fail(MOEQ_STATUS_CODE_OUT_OF_MEMORY, "conform: cannot map " + std::to_string(map_bytes_) + " bytes for " + call_ +
                                             "'s " + name_ + ": " + std::strerror(errno));
  map_ = static_cast<std::byte*>(m);
  open_begin_ = map_ + page;
  open_end_ = open_begin_ + open;
  if (::mprotect(map_, page, PROT_NONE) != 0 || ::mprotect(open_end_, page, PROT_NONE) != 0) {
    const int err = errno;
    ::munmap(map_, map_bytes_);
    fail(MOEQ_STATUS_CODE_INTERNAL, std::string("conform: mprotect of a guard page: ") + std::strerror(err));
  }
  // The data ends as close to the trailing guard page as alignment allows.
  const auto end = reinterpret_cast<uintptr_t>(open_end_) - kCanary - bytes;
  data_ = reinterpret_cast<void*>(end / kAlign * kAlign);
  std::fill(open_begin_, open_end_, kPattern);
  std::memset(data_, 0, bytes);

  std::lock_guard lock(g_table_mutex);
  for (int i = 0; i < kSlots; ++i) {
    GuardSlot& s = g_table[static_cast<size_t>(i)];
    if (s.used.load(std::memory_order_relaxed)) continue;
    s.before_lo = reinterpret_cast<uintptr_t>(map_);
    s.before_hi = reinterpret_cast<uintptr_t>(open_begin_);
    s.after_lo = reinterpret_cast<uintptr_t>(open_end_);
    s.after_hi = s.after_lo + page;
    s.data_lo = reinterpret_cast<uintptr_t>(data_);
    s.data_hi = s.data_lo + bytes;
    copy_label(s.call, call_);
    copy_label(s.name, name_);
    s.used.store(true, std::memory_order_release);
    slot_ = i;
    break;
  }
}

GuardedBuffer::~GuardedBuffer() {
  if (slot_ >= 0) {
    std::lock_guard lock(g_table_mutex);
    g_table[static_cast<size_t>(slot_)].used.store(false, std::memory_order_release);
  }
  if (map_ != nullptr) ::munmap(map_, map_bytes_);
}

std::string GuardedBuffer::damage() const {
  const auto* data = static_cast<const std::byte*>(data_);
  // After the data: the first and last changed byte, counted from the end of the data.
  const std::byte* tail = data + bytes_;
  size_t first = 0, last = 0, changed = 0;
  for (const std::byte* p = tail; p < open_end_; ++p)
    if (*p != kPattern) {
      if (changed++ == 0) first = static_cast<size_t>(p - tail);
      last = static_cast<size_t>(p - tail);
    }
  if (changed > 0)
    return call_ + " wrote past the end of " + name_ + ": " + std::to_string(changed) + " of the " +
           std::to_string(open_end_ - tail) + " canary bytes after it changed, bytes " + std::to_string(first) + ".." +
           std::to_string(last) + " after its last element";
  changed = 0;
  for (const std::byte* p = open_begin_; p < data; ++p)
    if (*p != kPattern) {
      if (changed++ == 0) first = static_cast<size_t>(data - p);
      last = static_cast<size_t>(data - p);
    }
  if (changed > 0)
    return call_ + " wrote before the start of " + name_ + ": " + std::to_string(changed) +
           " canary bytes before it changed, " + std::to_string(last) + ".." + std::to_string(first) +
           " bytes before its first element";
  return {};
}

void install_guard_fault_handler(int report_fd) {
  g_report_fd = report_fd;
  struct sigaction sa {};
  sa.sa_sigaction = &on_fault;
  sa.sa_flags = SA_SIGINFO | SA_RESETHAND;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGSEGV, &sa, nullptr);
  ::sigaction(SIGBUS, &sa, nullptr);
}

}  // namespace moeq::cli::conform
