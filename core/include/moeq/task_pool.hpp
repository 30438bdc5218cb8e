// A process-wide pool of worker threads for the loader's data-parallel work: packing rows into
// pinned staging (device_staging.hpp) and scanning weights for non-finite values. Work is
// submitted in groups; a thread that waits for a group runs queued tasks meanwhile (of any
// group), so a wait from inside a task, or from more threads than the pool has, cannot starve.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace moeq {

class TaskPool {
 public:
  // Tasks submitted together; wait() returns when every one has run, and rethrows the first
  // exception any of them threw (the others still run).
  class Group {
   public:
    Group() = default;
    Group(const Group&) = delete;
    Group& operator=(const Group&) = delete;

   private:
    friend class TaskPool;
    std::atomic<std::size_t> pending_{0};
    std::mutex mutex_;
    std::exception_ptr error_;
  };

  explicit TaskPool(unsigned threads);
  ~TaskPool();  // runs what is queued, then joins
  TaskPool(const TaskPool&) = delete;
  TaskPool& operator=(const TaskPool&) = delete;

  // The pool the loader shares: MOEQ_LOAD_THREADS threads if set (1..256), else
  // half the hardware threads, 2 to 16. Created on first use; lives to the end of the process.
  static TaskPool& shared();

  unsigned threads() const { return static_cast<unsigned>(workers_.size()); }
  // `group` must outlive the task: wait() on it before it goes.
  void submit(Group& group, std::function<void()> task);
  // Runs queued tasks until every task of `group` has run; rethrows the group's first error
  // (once: the group is reusable afterwards).
  void wait(Group& group);

  // Waits for `group` when it goes out of scope, errors ignored: declared right after a group
  // whose tasks use the scope's locals, it keeps a throw between submit() and wait() from
  // leaving tasks behind that outlive them.
  class Join {
   public:
    Join(TaskPool& pool, Group& group) : pool_(pool), group_(group) {}
    ~Join() {
      try {
        pool_.wait(group_);
      } catch (...) {
      }
    }
    Join(const Join&) = delete;
    Join& operator=(const Join&) = delete;

   private:
    TaskPool& pool_;
    Group& group_;
  };

 private:
  struct Item {
    Group* group;
    std::function<void()> task;
  };
  void run(Item& item);
  void worker();

  std::mutex mutex_;
  std::condition_variable work_;  // a task was queued, or stop
  std::condition_variable done_;  // a task finished
  std::deque<Item> queue_;
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace moeq
