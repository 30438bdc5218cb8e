// A fork-join loop over std::thread: runs fn(i) for every i in [0, n) on up to `threads`
// threads, the calling thread included, and returns when all are done. fn must not throw.
#pragma once
#include <atomic>
#include <cstddef>
#include <thread>
#include <vector>

namespace moeq {

template <class Fn>
void parallel_for(size_t n, unsigned threads, Fn&& fn) {
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(i);
  };
  const size_t extra = (threads > 1 && n > 1) ? std::min<size_t>(threads, n) - 1 : 0;
  std::vector<std::thread> pool;
  pool.reserve(extra);
  for (size_t t = 0; t < extra; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
}

}  // namespace moeq
