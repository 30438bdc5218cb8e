// Device scratch the host lends to plugins while layers load (ABI 1.2 scratch_acquire /
// scratch_release), one pool per device. The pool bounds the bytes it holds on the device
// (lent and kept idle for reuse) to a budget: an acquire waits while other borrowers hold
// scratch and the request does not fit; a borrower that already holds scratch never waits
// (so no two borrowers wait on each other), and a request alone on an empty pool always
// proceeds, even above the budget. Idle blocks are reused (smallest that fits) and freed to
// make room, and all of them when the last load using the pool ends.
//
// The allocator is injected so the waiting rules are tested on the CPU.
#pragma once
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <vector>

namespace moeq::host {

class ScratchPool {
 public:
  using Allocate = std::function<uintptr_t(std::size_t bytes)>;  // throws on failure
  using Free = std::function<void(uintptr_t address)>;           // never throws
  ScratchPool(Allocate allocate, Free free);
  ~ScratchPool();  // frees what it still holds
  ScratchPool(const ScratchPool&) = delete;
  ScratchPool& operator=(const ScratchPool&) = delete;

  // A load starts using the pool with this budget (the pool's budget is the largest of the
  // loads in progress); end_load when it finishes: the last one frees every idle block.
  void begin_load(std::size_t budget);
  void end_load();

  // `owner` identifies the borrower (the layer). Waits as described above.
  uintptr_t acquire(const void* owner, std::size_t bytes);
  // False when `owner` does not hold `address` (nothing happens then).
  bool release(const void* owner, uintptr_t address);
  // Takes back everything `owner` holds; returns how many blocks that was.
  std::size_t release_all(const void* owner);

  // For tests and reports.
  std::size_t lent_bytes() const;
  std::size_t idle_bytes() const;
  std::size_t allocations() const;       // calls of the allocator

 private:
  struct Block {
    uintptr_t address;
    std::size_t bytes;
  };
  void free_idle_locked(std::size_t need);  // frees idle blocks until `need` more bytes fit
  Allocate allocate_;
  Free free_;
  mutable std::mutex m_;
  std::condition_variable cv_;
  std::vector<std::size_t> budgets_;  // of the loads in progress
  std::size_t lent_ = 0, idle_ = 0, allocations_ = 0;
  std::multimap<std::size_t, uintptr_t> idle_blocks_;  // bytes -> address
  std::map<const void*, std::vector<Block>> held_;
};

}  // namespace moeq::host
