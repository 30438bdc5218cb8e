#include <moeq/task_pool.hpp>

#include <algorithm>
#include <cstdlib>
#include <string>

namespace moeq {

TaskPool::TaskPool(unsigned threads) {
  workers_.reserve(std::max(1u, threads));
  for (unsigned i = 0; i < std::max(1u, threads); ++i) workers_.emplace_back([this] { worker(); });
}

TaskPool::~TaskPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  work_.notify_all();
  for (std::thread& t : workers_) t.join();
}

TaskPool& TaskPool::shared() {
  static TaskPool* pool = [] {
    // NOTE: half the cores (2..16): the loader runs as many layer threads besides (min(8, cores)),
    // which hand pieces to the plugins and help the pool while they wait. A device load of 4 GB
    // measured 0.16-0.21 s with 8 pool threads on 16 cores, 0.19-0.25 s with 16, 0.26-0.27 s with
    // 24 (H100 host, bench/RESULTS.md, eighth session).
    unsigned n = std::clamp(std::thread::hardware_concurrency() / 2, 2u, 16u);
    if (const char* v = std::getenv("MOEQ_LOAD_THREADS")) {
      char* end = nullptr;
      const long k = std::strtol(v, &end, 10);
      if (end != v && *end == '\0' && k >= 1 && k <= 256) n = static_cast<unsigned>(k);
    }
    // NOTE: never destroyed: a static pool joined at exit would race the process's other
    // static destructors (the driver library among them); its idle threads end with the process.
    return new TaskPool(n);
  }();
  return *pool;
}

void TaskPool::submit(Group& group, std::function<void()> task) {
  group.pending_.fetch_add(1, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back({&group, std::move(task)});
  }
  work_.notify_one();
}

void TaskPool::run(Item& item) {
  try {
    item.task();
  } catch (...) {
    std::lock_guard<std::mutex> lock(item.group->mutex_);
    if (!item.group->error_) item.group->error_ = std::current_exception();
  }
  item.task = nullptr;  // what the task captured goes before the group is told
  {
    // NOTE: the decrement is made under the pool's mutex so that a waiter cannot miss the
    // notification between its check and its sleep.
    std::lock_guard<std::mutex> lock(mutex_);
    item.group->pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
  done_.notify_all();
}

void TaskPool::worker() {
  for (;;) {
    Item item;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      work_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_ with nothing left
      item = std::move(queue_.front());
      queue_.pop_front();
    }
    run(item);
  }
}

void TaskPool::wait(Group& group) {
  for (;;) {
    Item item;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (group.pending_.load(std::memory_order_acquire) == 0) break;
      if (queue_.empty()) {
        done_.wait(lock, [&] { return group.pending_.load(std::memory_order_acquire) == 0 || !queue_.empty(); });
        continue;
      }
      item = std::move(queue_.front());
      queue_.pop_front();
    }
    run(item);
  }
  std::exception_ptr e;
  {
    std::lock_guard<std::mutex> lock(group.mutex_);
    std::swap(e, group.error_);
  }
  if (e) std::rethrow_exception(e);
}

}  // namespace moeq
