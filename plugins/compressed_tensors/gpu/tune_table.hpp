// Tile configurations measured on a device (`moeq bench tune`): per (arch, SM count, scheme,
// layer shape, M) the bucket that ran fastest. The plugin ships the tables under gpu/tuned/
// (embedded at build time) and reads them when a layer's plan is made; MOEQ_CT_TUNE_TABLE names
// a JSON file of the same format whose entries come first. Shapes without an entry keep the
// heuristics (tile_heuristics.cpp).
#pragma once
#include "tile_heuristics.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace moeq::ct::gpu {

struct TunedEntry {
  std::string arch;       // "sm_90": the compute capability the times were measured on
  int multiprocessors = 0;
  // The card's memory in GiB, rounded (0: not recorded). Cards of one arch and SM count differ
  // in memory bandwidth (an H200 against an H100), which moves the decode tiles' optimum: where
  // two entries are equally near in M, the one of this card's memory (within 5 %) wins, then
  // one that records none, then one of another card's; so another card's entries still apply
  // where this card has none.
  int memory_gib = 0;
  std::string scheme;     // GpuScheme::key()
  int64_t experts = 0, top_k = 0, hidden = 0, inter = 0;  // local experts, I of the shard
  int64_t m = 0;          // tokens the bucket was timed at
  Bucket bucket;          // bm and the two GEMM tiles (max_tokens unused)
  double us = 0;          // its time, and the heuristic's at the same M (information)
  double heuristic_us = 0;
};

// Parses a table ({"format": "moeq-ct-tune/1", "entries": [...]}); throws moeq::Error naming
// `origin`, the entry and the field on anything malformed.
std::vector<TunedEntry> parse_tune_table(const std::string& text, const std::string& origin);
// The table as JSON text, one entry a line (what `moeq bench tune` writes).
std::string tune_table_json(const std::vector<TunedEntry>& entries);

// The entries a plan consults: MOEQ_CT_TUNE_TABLE's file (read once per process; an unreadable
// or malformed file is an error, not ignored), then the embedded tables.
const std::vector<TunedEntry>& tune_entries();

// A card's memory in GiB, rounded (TunedEntry::memory_gib; 0 for 0 or fewer bytes).
int memory_gib(int64_t bytes);

// "mma 64 w1x4 s6" and back: the text form of a GEMM tile in tables and messages.
std::string tile_text(const GemmTile& t);
GemmTile parse_tile_text(const std::string& text, const std::string& where);

// The embedded tables (generated from gpu/tuned/*.json by embed_kernels.cmake).
struct EmbeddedTable {
  const char* name;
  const char* text;
};
std::vector<EmbeddedTable> embedded_tune_tables();

}  // namespace moeq::ct::gpu
