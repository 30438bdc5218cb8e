// How a checkpoint's block-scale grid maps onto one tensor-parallel shard, losslessly.
//
// A shard of I/tp rows (w1/w3) or columns (w2) that is not a multiple of the block size
// starts inside a checkpoint block. The shard then gets a finer grid whose block size
// divides both the checkpoint block and the shard, gcd(block, I/tp): every fine block lies
// inside exactly one checkpoint block and repeats its scale, so the dequantized shard is
// bit-identical to the same slice of the unsharded weight (docs/MOE_SEMANTICS.md §3.2).
#pragma once
#include <cstdint>
#include <numeric>

namespace moeq::ct {

struct ShardGrid {
  int64_t full = 0;     // extent of the dimension in the checkpoint
  int64_t start = 0;    // first element of this shard
  int64_t length = 0;   // extent of this shard
  int64_t block = 0;    // checkpoint block size along the dimension
  int64_t refined = 0;  // block size of this shard's grid; divides `block`
  int64_t count = 0;    // grid entries of this shard

  // Checkpoint grid index of this shard's grid entry j.
  int64_t source_index(int64_t j) const { return (start + j * refined) / block; }
  bool is_refined() const { return refined != block; }
  int64_t checkpoint_count() const { return (full + block - 1) / block; }
};

// A dimension split in `parts` equal shards (parts divides full); `part` is this shard.
inline ShardGrid shard_grid(int64_t full, int64_t block, int64_t part, int64_t parts) {
  ShardGrid g;
  g.full = full;
  g.length = full / parts;
  g.start = part * g.length;
  g.block = block;
  if (parts == 1 || g.length % block == 0) {
    g.refined = block;  // unsharded (a ragged last block is fine) or block-aligned shards
    g.count = (g.length + block - 1) / block;
  } else {
    g.refined = std::gcd(block, g.length);
    g.count = g.length / g.refined;
  }
  return g;
}

}  // namespace moeq::ct
