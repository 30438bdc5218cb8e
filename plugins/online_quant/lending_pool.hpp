// A pool that lends at most `limit` items at once to the threads that ask, making new ones up to
// that many and reusing the ones given back; a thread that finds them all lent waits. Users
// attach while they may borrow; when the last one detaches, the idle items are handed back to
// the caller to destroy (the pool knows nothing of devices or contexts). online_quant keeps one
// per device for its quantizer scratch, so that however many layers load at once, the device
// holds at most one expert's high-precision weights.
#pragma once
#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

namespace moeq::online {

template <class T>
class LendingPool {
 public:
  using Items = std::vector<std::unique_ptr<T>>;

  void attach() {
    std::lock_guard lock(m_);
    ++users_;
  }
  // Returns the idle items to destroy when this was the last user (none otherwise).
  Items detach() {
    Items drop;
    std::lock_guard lock(m_);
    if (users_ > 0) --users_;
    if (users_ == 0) {
      existing_ -= idle_.size();
      drop.swap(idle_);
    }
    return drop;
  }
  // An idle item, or a new one (default-constructed) while fewer than `limit` exist. Each
  // borrower takes 1/limit of the pool's budget while it holds its item (a borrower of bigger
  // items asks for a smaller limit): it waits until its share is free, as well as while none is
  // idle and `limit` exist. `limit` 0 counts as 1, above 16 as 16.
  T* acquire(std::size_t limit) {
    limit = std::clamp<std::size_t>(limit, 1, 16);
    const std::size_t share = kBudget / limit;
    std::unique_lock lock(m_);
    cv_.wait(lock, [&] { return used_ + share <= kBudget && (!idle_.empty() || existing_ < limit); });
    used_ += share;
    T* item = nullptr;
    if (!idle_.empty()) {
      item = idle_.back().release();
      idle_.pop_back();
    } else {
      ++existing_;
      lock.unlock();
      try {
        item = new T();
      } catch (...) {
        lock.lock();
        --existing_;
        used_ -= share;
        cv_.notify_all();
        throw;
      }
      lock.lock();
    }
    shares_[item] = share;
    high_water_ = std::max(high_water_, existing_);
    return item;
  }
  // Back to the pool; returned to the caller to destroy instead when no user is attached.
  std::unique_ptr<T> give_back(T* item) {
    std::unique_ptr<T> owned(item);
    {
      std::lock_guard lock(m_);
      release_share(item);
      if (users_ == 0) {
        --existing_;
      } else {
        idle_.push_back(std::move(owned));
      }
    }
    cv_.notify_all();  // waiters wait on different limits: wake them all
    return owned;
  }
  // A lent item the caller destroys itself (it failed to set up): its place is freed.
  std::unique_ptr<T> forget(T* item) {
    {
      std::lock_guard lock(m_);
      --existing_;
      release_share(item);
    }
    cv_.notify_all();
    return std::unique_ptr<T>(item);
  }

  std::size_t existing() const {
    std::lock_guard lock(m_);
    return existing_;
  }
  // The most items that existed at once.
  std::size_t high_water() const {
    std::lock_guard lock(m_);
    return high_water_;
  }

 private:
  static constexpr std::size_t kBudget = 720720;  // divisible by every limit 1..16
  void release_share(T* item) {
    const auto it = shares_.find(item);
    if (it == shares_.end()) return;
    used_ -= it->second;
    shares_.erase(it);
  }
  mutable std::mutex m_;
  std::condition_variable cv_;
  Items idle_;
  std::size_t existing_ = 0;  // idle + lent
  std::size_t used_ = 0;      // the shares of the budget lent items hold
  std::map<const T*, std::size_t> shares_;
  std::size_t high_water_ = 0;
  int users_ = 0;
};

}  // namespace moeq::online
