#include <moeq/scratch_pool.hpp>

#include <algorithm>
#include <utility>

namespace moeq::host {

ScratchPool::ScratchPool(Allocate allocate, Free free) : allocate_(std::move(allocate)), free_(std::move(free)) {}

ScratchPool::~ScratchPool() {
  for (auto& [bytes, address] : idle_blocks_) free_(address);
  for (auto& [owner, blocks] : held_)
    for (const Block& b : blocks) free_(b.address);
}

void ScratchPool::begin_load(std::size_t budget) {
  std::lock_guard lock(m_);
  budgets_.push_back(budget);
  cv_.notify_all();
}

void ScratchPool::end_load() {
  std::lock_guard lock(m_);
  if (!budgets_.empty()) budgets_.pop_back();
  if (budgets_.empty()) free_idle_locked(~std::size_t{0});
  cv_.notify_all();
}

void ScratchPool::free_idle_locked(std::size_t need) {
  // Largest idle blocks first: the fewest frees that make room.
  while (!idle_blocks_.empty() && need > 0) {
    auto it = std::prev(idle_blocks_.end());
    free_(it->second);
    idle_ -= it->first;
    need = need > it->first ? need - it->first : 0;
    idle_blocks_.erase(it);
  }
}

uintptr_t ScratchPool::acquire(const void* owner, std::size_t bytes) {
  std::unique_lock lock(m_);
  const std::size_t budget = budgets_.empty() ? 0 : *std::max_element(budgets_.begin(), budgets_.end());
  const auto h = held_.find(owner);
  const bool holds = h != held_.end() && !h->second.empty();
  // An idle block that fits (and is not more than twice the request) is taken without waiting
  // on the budget: it is already counted.
  auto fit = idle_blocks_.lower_bound(bytes);
  if (fit == idle_blocks_.end() || fit->first > 2 * bytes) {
    // Wait while others hold scratch and the new block would pass the budget even after every
    // idle block is freed. A borrower holding scratch, or one alone, goes on.
    cv_.wait(lock, [&] {
      if (holds || lent_ == 0) return true;
      return lent_ + bytes <= budget;
    });
    fit = idle_blocks_.lower_bound(bytes);
  }
  if (fit != idle_blocks_.end() && fit->first <= 2 * bytes) {
    const Block b{fit->second, fit->first};
    idle_ -= b.bytes;
    idle_blocks_.erase(fit);
    lent_ += b.bytes;
    held_[owner].push_back(b);
    return b.address;
  }
  if (lent_ + idle_ + bytes > budget) free_idle_locked(lent_ + idle_ + bytes - budget);
  ++allocations_;
  lent_ += bytes;  // counted before the call so that waiters see it
  uintptr_t address = 0;
  lock.unlock();
  try {
    address = allocate_(bytes);
  } catch (...) {
    lock.lock();
    lent_ -= bytes;
    cv_.notify_all();
    throw;
  }
  lock.lock();
  held_[owner].push_back({address, bytes});
  return address;
}

bool ScratchPool::release(const void* owner, uintptr_t address) {
  std::lock_guard lock(m_);
  auto it = held_.find(owner);
  if (it == held_.end()) return false;
  auto& blocks = it->second;
  auto b = std::find_if(blocks.begin(), blocks.end(), [&](const Block& x) { return x.address == address; });
  if (b == blocks.end()) return false;
  const Block block = *b;
  blocks.erase(b);
  if (blocks.empty()) held_.erase(it);
  lent_ -= block.bytes;
  if (budgets_.empty()) {
    free_(block.address);
  } else {
    idle_blocks_.emplace(block.bytes, block.address);
    idle_ += block.bytes;
  }
  cv_.notify_all();
  return true;
}

std::size_t ScratchPool::release_all(const void* owner) {
  std::vector<Block> blocks;
  {
    std::lock_guard lock(m_);
    auto it = held_.find(owner);
    if (it == held_.end()) return 0;
    blocks = it->second;
  }
  for (const Block& b : blocks) release(owner, b.address);
  return blocks.size();
}

std::size_t ScratchPool::lent_bytes() const {
  std::lock_guard lock(m_);
  return lent_;
}
std::size_t ScratchPool::idle_bytes() const {
  std::lock_guard lock(m_);
  return idle_;
}
std::size_t ScratchPool::allocations() const {
  std::lock_guard lock(m_);
  return allocations_;
}

}  // namespace moeq::host
