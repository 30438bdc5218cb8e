// The load pipeline (pinned staging chunks, reader threads, async copies) and its benchmark
// commands: chunk planning covers every byte once, `moeq bench load --synthesize` writes
// checkpoints the strict loader takes, the commands parse and say why they cannot run
// without a driver; on a CUDA device, uploads round-trip byte for byte.
#include "support.hpp"

#include <moeq/cuda_driver.hpp>
#include <moeq/staged_upload.hpp>
#include <moeq_writer/synthetic.hpp>

#include <boost/json.hpp>

#include <algorithm>
#include <cstring>
#include <random>
#include <sstream>

using namespace moeq;
using namespace moeq::test;

namespace {

// Every byte of every job in exactly one piece; pieces inside their chunk, aligned, disjoint.
void check_plan(const std::vector<size_t>& sizes, size_t chunk, size_t align) {
  const std::vector<cuda::ChunkPlan> plans = cuda::plan_chunks(sizes, chunk, align);
  std::vector<std::vector<std::pair<size_t, size_t>>> per_job(sizes.size());
  for (const auto& plan : plans) {
    REQUIRE_FALSE(plan.pieces.empty());
    size_t sum = 0;
    std::vector<std::pair<size_t, size_t>> spans;
    for (const auto& p : plan.pieces) {
      REQUIRE(p.job < sizes.size());
      CHECK(p.bytes > 0);
      CHECK(p.chunk_offset % align == 0);
      CHECK(p.chunk_offset + p.bytes <= chunk);
      spans.push_back({p.chunk_offset, p.chunk_offset + p.bytes});
      per_job[p.job].push_back({p.job_offset, p.bytes});
      sum += p.bytes;
    }
    CHECK(sum == plan.bytes);
    CHECK(plan.bytes <= chunk);
    std::sort(spans.begin(), spans.end());
    for (size_t i = 1; i < spans.size(); ++i) CHECK(spans[i - 1].second <= spans[i].first);
  }
  for (size_t j = 0; j < sizes.size(); ++j) {
    auto& v = per_job[j];
    std::sort(v.begin(), v.end());
    size_t at = 0;
    for (const auto& [offset, bytes] : v) {
      CHECK(offset == at);  // no gap, no overlap
      at = offset + bytes;
    }
    CHECK(at == sizes[j]);
    if (sizes[j] == 0) CHECK(v.empty());
  }
}

bool device_or_skip() {
  if (!cuda::available()) MESSAGE("SKIPPED: needs a CUDA device: " << cuda::unavailable_reason());
  return cuda::available();
}

writer::SyntheticSpec tiny(writer::WeightScheme w) {
  writer::SyntheticSpec s = *writer::synthetic_shape("Qwen3-30B-A3B");
  s.num_experts = 8;
  s.hidden = 64;
  s.intermediate = 32;
  s.top_k = 2;
  s.num_layers = 2;
  s.weights = w;
  s.threads = 2;
  return s;
}

}  // namespace

TEST_CASE("chunk planning covers every byte of every tensor exactly once") {
  check_plan({}, 16, 1);
  check_plan({0, 0}, 16, 1);
  check_plan({16}, 16, 1);          // exactly one chunk
  check_plan({17}, 16, 1);          // one byte over
  check_plan({1, 1, 1, 1}, 16, 1);  // packed into one chunk
  check_plan({5, 0, 40, 3, 16, 1}, 16, 1);
  check_plan({5, 0, 40, 3, 16, 1}, 16, 8);
  check_plan({1000, 1, 255, 256, 257}, 256, 256);
  std::mt19937_64 rng(11);
  for (int round = 0; round < 50; ++round) {
    std::vector<size_t> sizes(rng() % 40);
    for (auto& s : sizes) s = rng() % 4 == 0 ? rng() % 5000 : rng() % 100;
    const size_t align = size_t{1} << (rng() % 6);
    check_plan(sizes, 64 + rng() % 1000, align);
  }
}

TEST_CASE("chunk planning packs small tensors together and cuts big ones across chunks") {
  const std::vector<size_t> small(100, 10);
  CHECK(cuda::plan_chunks(small, 1000, 1).size() == 1);
  const std::vector<size_t> big = {10'000};
  const auto plans = cuda::plan_chunks(big, 1000, 1);
  CHECK(plans.size() == 10);
  CHECK_THROWS_WITH(cuda::plan_chunks(big, 0, 1), doctest::Contains("chunk size"));
  CHECK_THROWS_WITH(cuda::plan_chunks(big, 1000, 3), doctest::Contains("power of two"));
}

TEST_CASE("synthetic checkpoints load strictly clean for every scheme, online ones through online_quant") {
  TempDir d;
  Registry registry(host::api());
  host::set_registry(&registry);
  registry.load_directory(MOEQ_TEST_PLUGIN_DIR);
  const std::pair<writer::WeightScheme, const char*> cases[] = {{writer::WeightScheme::kFp8Channel, "fp8-channel"},
                                                                {writer::WeightScheme::kFp8Block, "fp8-block"},
                                                                {writer::WeightScheme::kInt8Channel, "int8"},
                                                                {writer::WeightScheme::kUnquantized, "bf16"}};
  for (const auto& [scheme, name] : cases) {
    CAPTURE(name);
    const auto dir = d / name;
    const writer::SyntheticResult r = writer::write_synthetic_checkpoint(dir, tiny(scheme));
    CHECK(r.files == 2);
    CHECK(std::filesystem::exists(dir / "model.safetensors.index.json"));
    const Checkpoint ck = Checkpoint::open(dir);
    CHECK(ck.files().size() == 2);
    CHECK(static_cast<int64_t>(ck.tensors().size()) == r.tensors);
    uint64_t bytes = 0;
    for (const auto& [n, t] : ck.tensors()) bytes += t.nbytes();
    CHECK(bytes == r.bytes);
    LoadOptions lo;
    if (scheme == writer::WeightScheme::kUnquantized) lo.online_scheme = "int8";
    LoadedModel m = load_model(ck, registry, lo);  // strict: throws on any ledger violation
    REQUIRE(m.layers.size() == 2);
    for (const auto& l : m.layers) CHECK(l->report.ok());
    CHECK(m.layers[0]->report.plugin == (scheme == writer::WeightScheme::kUnquantized ? "online_quant" : "compressed_tensors"));
  }
  host::set_registry(nullptr);
}

TEST_CASE("synthetic checkpoints are a function of the seed and refuse an existing directory") {
  TempDir d;
  writer::SyntheticSpec s = tiny(writer::WeightScheme::kFp8Channel);
  writer::write_synthetic_checkpoint(d / "a", s);
  s.threads = 1;
  writer::write_synthetic_checkpoint(d / "b", s);
  s.seed += 1;
  writer::write_synthetic_checkpoint(d / "c", s);
  const std::string f = "model-00001-of-00002.safetensors";
  CHECK(read_text(d / "a" / f) == read_text(d / "b" / f));
  CHECK(read_text(d / "a" / f) != read_text(d / "c" / f));
  CHECK_THROWS_WITH(writer::write_synthetic_checkpoint(d / "a", s), doctest::Contains("already exists"));
  // No fp8 code is NaN (e4m3fn: S.1111.111).
  const Checkpoint ck = Checkpoint::open(d / "a");
  for (const auto& [name, t] : ck.tensors()) {
    if (t.dtype != DType::F8_E4M3) continue;
    for (size_t i = 0; i < t.nbytes(); ++i) REQUIRE((static_cast<uint8_t>(t.data[i]) & 0x7f) != 0x7f);
  }
}

namespace {

struct UsageCase {
  const char* args;
  const char* says;
};

// Each `moeq <command> <case.args>` is a usage error (exit 2) whose message contains case.says.
void check_usage_errors(const std::string& command, std::initializer_list<UsageCase> cases) {
  for (const UsageCase& c : cases) {
    CliRun r = run_moeq_cli(command + " " + c.args);
    CAPTURE(c.args);
    CAPTURE(r.out);
    CHECK(r.code == 2);
    CHECK(r.out.find(c.says) != std::string::npos);
    CHECK(r.out.find("unexpected error") == std::string::npos);
  }
}

}  // namespace

TEST_CASE("moeq bench load --synthesize writes a checkpoint that moeq load loads strictly") {
  TempDir d;
  const std::string dir = (d / "qwen").string();
  CliRun w = run_moeq_cli("bench load --synthesize Qwen3-30B-A3B --dims 8,64,32 --layers 2 --scheme fp8-channel "
                          "--write-only " + dir);
  CAPTURE(w.out);
  REQUIRE(w.code == 0);
  CHECK(w.out.find("E=8, H=64, I=32") != std::string::npos);
  CliRun l = run_moeq_cli("load " + dir);
  CAPTURE(l.out);
  CHECK(l.code == 0);
  size_t clean = 0;
  for (size_t at = l.out.find("strict load clean"); at != std::string::npos; at = l.out.find("strict load clean", at + 1))
    ++clean;
  CHECK(clean == 2);
  CliRun again = run_moeq_cli("bench load --synthesize Qwen3-30B-A3B --dims 8,64,32 --write-only " + dir);
  CHECK(again.code == 0);
  CHECK(again.out.find("exists; not synthesizing") != std::string::npos);

  const std::string bf16 = (d / "bf16").string();
  CliRun wb = run_moeq_cli("bench load --synthesize Qwen3-30B-A3B --dims 8,64,32 --layers 1 --scheme bf16 --write-only " +
                           bf16);
  REQUIRE(wb.code == 0);
  CliRun lb = run_moeq_cli("load --online fp8-channel " + bf16);
  CAPTURE(lb.out);
  CHECK(lb.code == 0);
  CHECK(lb.out.find("online_quant") != std::string::npos);
}

TEST_CASE("moeq bench load and jit parse their options and refuse bad ones") {
  CliRun h = run_moeq_cli("bench load --help");
  CAPTURE(h.out);
  CHECK(h.code == 0);
  for (const char* opt : {"--online", "--threads", "--repeat", "--json", "--synthesize", "--scheme", "--layers",
                          "--dims", "--write-only", "--chunk-mib"})
    CHECK(h.out.find(opt) != std::string::npos);
  CliRun j = run_moeq_cli("bench jit --help");
  CHECK(j.code == 0);
  CHECK(j.out.find("--scheme") != std::string::npos);
  CHECK(run_moeq_cli("bench load").code != 0);  // DIR is required
  CliRun bad_online = run_moeq_cli("bench load --online int4 /nonexistent");
  CHECK(bad_online.code != 0);
  CHECK(bad_online.out.find("--online") != std::string::npos);
  CliRun bad_shape = run_moeq_cli("bench load --synthesize Llama-70B --write-only /nonexistent/x");
  CHECK(bad_shape.code == 2);
  CHECK(bad_shape.out.find("--synthesize: unknown shape 'Llama-70B'; valid shapes: Qwen3-30B-A3B, Mixtral-8x7B") !=
        std::string::npos);
  CliRun bad_dims = run_moeq_cli("bench load --synthesize Qwen3-30B-A3B --dims 8,64 --write-only /nonexistent/x");
  CHECK(bad_dims.code == 2);
  CHECK(bad_dims.out.find("E,H,I") != std::string::npos);
}

TEST_CASE("moeq load routes the names of a checkpoint of many tensors on several threads, each layer whole") {
  TempDir d;
  const std::string dir = (d / "many").string();
  // 6 layers x 128 experts x 3 projections x (weight, weight_scale): 4,608 expert tensors, past
  // the count above which the loader routes names in parallel.
  CliRun w = run_moeq_cli("bench load --synthesize Qwen3-30B-A3B --dims 128,64,32 --layers 6 --scheme fp8-channel "
                          "--write-only " + dir);
  CAPTURE(w.out);
  REQUIRE(w.code == 0);
  CliRun l = run_moeq_cli("--json load " + dir);
  CAPTURE(l.out);
  REQUIRE(l.code == 0);
  const boost::json::object o = boost::json::parse(l.out).as_object();
  const boost::json::array& layers = o.at("layers").as_array();
  REQUIRE(layers.size() == 6);
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const boost::json::object& layer = layers[i].as_object();
    CHECK(layer.at("layer").as_string() == "model.layers." + std::to_string(i) + ".mlp");
    CHECK(layer.at("strict_clean").as_bool());
    CHECK(layer.at("consumed").to_number<int64_t>() == 128 * 3 * 2);
    CHECK(layer.at("unknown").to_number<int64_t>() == 0);
  }
}

TEST_CASE("moeq bench load refuses bad --synthesize values as usage errors (exit 2) naming the option") {
  TempDir d;
  const std::string dir = (d / "ck").string();
  check_usage_errors("bench load --write-only " + dir,
                     {
                         {"--synthesize nosuch", "--synthesize: unknown shape 'nosuch'; valid shapes: Qwen3-30B-A3B"},
                         {"--synthesize Qwen3-30B-A3B --dims -4,256,128",
                          "--dims: wants E,H,I (three positive integers), found '-4,256,128'"},
                         {"--synthesize Qwen3-30B-A3B --dims 8,64,32x", "--dims: wants E,H,I"},
                         {"--synthesize Qwen3-30B-A3B --dims 8,,64,32", "--dims: wants E,H,I"},
                         {"--synthesize Qwen3-30B-A3B --scheme int4",
                          "--scheme: unknown scheme 'int4'; valid schemes: fp8-channel"},
                     });
  CHECK_FALSE(std::filesystem::exists(dir));  // refused before anything was written
}

TEST_CASE("moeq bench load options of --synthesize without it are usage errors, not ignored") {
  TempDir d;
  const std::string dir = (d / "ck").string();
  for (const char* opt : {"--scheme bf16", "--layers 2", "--dims 8,64,32", "--seed 3", "--write-only"}) {
    CliRun r = run_moeq_cli(std::string("bench load ") + opt + " " + dir);
    CAPTURE(opt);
    CAPTURE(r.out);
    CHECK(r.code == 2);
    const std::string name = std::string(opt).substr(0, std::string(opt).find(' '));
    CHECK(r.out.find(name + " requires --synthesize") != std::string::npos);
  }
}

TEST_CASE("moeq bench apply --dims refuses malformed geometries and those the kernels cannot run (exit 2)") {
  check_usage_errors(
      "bench apply",
      {
          {"--dims 64,6,2048", "--dims: wants E,TOPK,H,I or NAME=E,TOPK,H,I (four positive integers), found '64,6,2048'"},
          {"--dims 64,6,2048,1408,1", "--dims: wants E,TOPK,H,I or NAME=E,TOPK,H,I (four positive integers)"},
          {"--dims 64,0,2048,1408", "found '64,0,2048,1408'"},
          {"--dims 64,-6,2048,1408", "found '64,-6,2048,1408'"},
          {"--dims 64,6,2048,14x", "found '64,6,2048,14x'"},
          {"--dims 64,,2048,1408", "found '64,,2048,1408'"},
          {"--dims 64,6,2048,1408,", "found '64,6,2048,1408,'"},
          {"--dims =64,6,2048,1408", "--dims: '=64,6,2048,1408': the name before '=' must be letters, digits"},
          {"--dims a/b=64,6,2048,1408", "the name before '=' must be letters, digits, '-', '_' or '.'"},
          {"--dims x=64,6,2048", "found 'x=64,6,2048'"},
          {"--dims Mixtral-8x7B=8,2,4096,14336", "'Mixtral-8x7B' is a named shape (--shape)"},
          {"--dims 8,9,2048,1408", "--dims: TOPK=9 in '8,9,2048,1408': more than the 8 experts"},
          {"--dims 64,33,2048,1408", "--dims: TOPK=33 in '64,33,2048,1408': the kernels take top_k of at most 32"},
          {"--dims 2048,8,2048,1408", "--dims: E=2048 in '2048,8,2048,1408': the kernels take at most 1024 experts"},
          {"--dims 64,6,2064,1400", "--dims: I=1400 in '64,6,2064,1400': the intermediate size must be a multiple of 16"},
          {"--dims 64,6,2050,1408", "--dims: H=2050 in '64,6,2050,1408': the hidden size must be a multiple of 16"},
          {"--dims 64,6,8,1408", "--dims: H=8 in '64,6,8,1408': the hidden size must be a multiple of 16"},
          {"--dims 64,6,2048,1408 --dims 8,2,64,32 --dims 64,6,2048,1408",
           "--dims: '64,6,2048,1408' names the case 'E64-k6-H2048-I1408' a second time"},
          {"--dims g=64,6,2048,1408 --dims g=8,2,64,32", "--dims: 'g=8,2,64,32' names the case 'g' a second time"},
          {"--dims E8-k2-H64-I32=8,2,64,32 --dims 8,2,64,32", "names the case 'E8-k2-H64-I32' a second time"},
          {"--dims 64,32,65536,1408", "--dims: '64,32,65536,1408' at M=8192 is too large for the kernels' 32-bit row "
                                      "indexing; give a smaller --m"},
          {"--m 1,100000000 --dims 8,8,16,16", "at M=100000000 is too large"},
          {"--dims 8,2,64,32 8,2,64,32", "8,2,64,32"},  // one value per --dims: the second is not taken
      });
}

TEST_CASE("moeq bench apply takes --dims alone or with --shape and stops, without a driver, before GPU work") {
  CliRun h = run_moeq_cli("bench apply --help");
  CHECK(h.code == 0);
  CHECK(h.out.find("--dims") != std::string::npos);
  // The 32-bit bound follows --m: what M=8192 refuses, M=16 takes.
  for (const char* args : {"--dims 64,6,2048,1408", "--dims my.geom_1=8,2,64,32 --shape Mixtral-8x7B --dims 8,8,16,16",
                           "--dims 1024,32,7168,2048 --m 1,16 --json", "--dims 64,32,65536,1408 --m 16"}) {
    CliRun r = run_moeq_cli(std::string("bench apply ") + args);
    CAPTURE(args);
    CAPTURE(r.out);
    CHECK(r.out.find("--dims:") == std::string::npos);
    if (cuda::available()) continue;  // it would run; the GPU test below runs one
    CHECK(r.code == 1);
    CHECK((r.out.find("no CUDA driver") != std::string::npos || r.out.find("without a CUDA toolkit") != std::string::npos));
  }
}

#if MOEQ_HAVE_GPU_BENCH
namespace {

// The names under `dir`, to see that a run left nothing behind.
std::vector<std::string> entries(const std::filesystem::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) out.push_back(e.path().filename().string());
  return out;
}

}  // namespace

TEST_CASE("moeq bench jit and apply refuse bad --scheme, --shape and --m lists as usage errors (exit 2)") {
  check_usage_errors("bench jit", {
                                      {"--scheme bf16,,bf16", "--scheme: empty item in 'bf16,,bf16'"},
                                      {"--scheme bf16,", "--scheme: empty item in 'bf16,'"},
                                      {"--scheme bf16,w8a16,bf16", "--scheme: 'bf16' is listed twice in 'bf16,w8a16,bf16'"},
                                      {"--scheme nosuch",
                                       "--scheme: unknown scheme 'nosuch'; valid schemes: bf16, fp8-channel, fp8-block, "
                                       "fp8-tensor, fp8-tensor-static, w8a16"},
                                      {"--shape nosuch",
                                       "--shape: unknown shape 'nosuch'; valid shapes: Mixtral-8x7B, Qwen3-30B-A3B"},
                                  });
  check_usage_errors("bench apply", {
                                        {"--scheme bf16,bf16", "--scheme: 'bf16' is listed twice"},
                                        {"--scheme nosuch", "--scheme: unknown scheme 'nosuch'; valid schemes: bf16"},
                                        {"--shape DeepSeek-V3,,Mixtral-8x7B", "--shape: empty item"},
                                        {"--m abc", "--m: 'abc' is not a positive integer"},
                                        {"--m 1,0", "--m: '0' is not a positive integer"},
                                        {"--m 16,8x", "--m: '8x' is not a positive integer"},
                                        {"--m 1,,16", "--m: empty item in '1,,16'"},
                                        {"--m 16,16", "--m: '16' is listed twice"},
                                    });
}

TEST_CASE("moeq bench tune refuses bad lists, geometries, budgets and archs as usage errors (exit 2)") {
  check_usage_errors("bench tune", {
                                       {"--scheme bf16,bf16", "--scheme: 'bf16' is listed twice"},
                                       {"--scheme nosuch", "--scheme: unknown scheme 'nosuch'; valid schemes: bf16"},
                                       {"--shape Mixtral-8x7B,", "--shape: empty item"},
                                       {"--m 1,0", "--m: '0' is not a positive integer"},
                                       {"--dims 8,2,64", "--dims: wants E,TOPK,H,I"},
                                       {"--dims 8,2,64,24", "I=24 in '8,2,64,24': the intermediate size must be a multiple of 16"},
                                       {"--seconds 0", "--seconds: Value 0 not in range"},
                                       {"--compile-only sm_75", "--compile-only"},
                                   });
}

TEST_CASE("moeq bench tune --compile-only compiles the candidates of a geometry without a GPU") {
  TempDir tmp;
  CliRun r = run_moeq_cli("bench tune --compile-only sm_90a --scheme bf16 --dims 8,2,64,32 --m 1,64",
                          "MOEQ_CACHE_DIR=" + (tmp.path() / "cache").string());
  CAPTURE(r.out);
  REQUIRE(r.code == 0);
  // "compiled N kernel sets": the router/repack set, the harness's own, and more than one candidate.
  const auto at = r.out.find("compiled ");
  REQUIRE(at != std::string::npos);
  CHECK(std::stoi(r.out.substr(at + 9)) > 4);
  CHECK(std::filesystem::exists(tmp.path() / "cache"));
}

TEST_CASE("moeq bench tune --compile-only --ptxas-report prints every kernel's registers and spills") {
  TempDir tmp;
  const std::string env = "MOEQ_CACHE_DIR=" + (tmp.path() / "cache").string();
  CliRun r = run_moeq_cli("bench tune --compile-only sm_90a --ptxas-report --scheme bf16 --dims 8,2,64,32 --m 1", env);
  CAPTURE(r.out);
  REQUIRE(r.code == 0);
  // One line a kernel ("SET KERNEL: R registers, F bytes stack frame, S / L bytes spill ..."), then
  // the count; every GEMM of the candidates reports a register count ptxas could have chosen.
  int gemms = 0;
  std::istringstream in(r.out);
  for (std::string line; std::getline(in, line);) {
    const auto at = line.find(" moe_gemm");
    if (at == std::string::npos) continue;
    ++gemms;
    const auto colon = line.find(": ", at);
    REQUIRE(colon != std::string::npos);
    const int regs = std::stoi(line.substr(colon + 2));
    CHECK(regs >= 16);
    CHECK(regs <= 255);
    CHECK(line.find("bytes spill stores / loads") != std::string::npos);
  }
  CHECK(gemms >= 4);
  const auto at = r.out.find("ptxas: ");
  REQUIRE(at != std::string::npos);
  CHECK(std::stoi(r.out.substr(at + 7)) > gemms);  // the shared and utility sets' kernels too
  CHECK(r.out.find("came from the JIT cache") == std::string::npos);
  // A second run finds every set in the cache, which keeps no log, and says so.
  CliRun again = run_moeq_cli("bench tune --compile-only sm_90a --ptxas-report --scheme bf16 --dims 8,2,64,32 --m 1", env);
  CAPTURE(again.out);
  CHECK(again.code == 0);
  CHECK(again.out.find("came from the JIT cache without a log") != std::string::npos);
  // Without --compile-only it is refused before anything runs.
  CliRun alone = run_moeq_cli("bench tune --ptxas-report --scheme bf16", env);
  CHECK(alone.code != 0);
  CHECK(alone.out.find("--ptxas-report requires --compile-only") != std::string::npos);
}

TEST_CASE("moeq bench jit --arch is checked before anything is printed or created") {
  TempDir tmp;
  const std::string env = "TMPDIR=" + tmp.path().string();
  for (const char* arch : {"sm_12", "sm_75", "90a", "sm_9", "sm_90b", "sm_1000", "compute_90"}) {
    CliRun r = run_moeq_cli(std::string("bench jit --scheme bf16 --arch ") + arch, env);
    CAPTURE(r.out);
    CHECK(r.code == 2);
    CHECK(r.out.find(std::string("--arch: '") + arch + "'") != std::string::npos);
    CHECK(r.out.find("give sm_XY, sm_XYa or sm_XYf with compute capability 8.0 or newer") != std::string::npos);
    CHECK(r.out.find("| scheme |") == std::string::npos);
  }
  CHECK(entries(tmp.path()).empty());
}

TEST_CASE("moeq bench jit that skips every scheme says nothing was measured and exits 1") {
  TempDir tmp;
  const std::string env = "TMPDIR=" + tmp.path().string();
  CliRun r = run_moeq_cli("bench jit --arch sm_80 --scheme fp8-block,fp8-channel", env);
  CAPTURE(r.out);
  CHECK(r.code == 1);
  CHECK(r.out.find("| fp8-block | - | skipped: fp8 needs sm_89 or newer") != std::string::npos);
  CHECK(r.out.find("NOTHING MEASURED: every scheme was skipped on sm_80") != std::string::npos);
  CHECK(r.out.find("came from the disk cache only") == std::string::npos);
  CliRun j = run_moeq_cli("bench jit --arch sm_80 --scheme fp8-block --json", env, false);
  CAPTURE(j.out);
  CHECK(j.code == 1);
  const boost::json::object o = boost::json::parse(j.out).as_object();
  CHECK_FALSE(o.at("ok").as_bool());
  CHECK(o.at("schemes").as_array().empty());
  CHECK(o.at("skipped").as_array().at(0).as_object().at("scheme").as_string() == "fp8-block");
  CHECK(entries(tmp.path()).empty());  // the cache root is removed
}

TEST_CASE("moeq bench jit compiles a scheme cold, serves it warm from disk, and names its longest set") {
  TempDir tmp;
  CliRun j = run_moeq_cli("bench jit --arch sm_80 --scheme bf16 --shape Granite-3B-A800M --max-tokens 16 --json",
                          "TMPDIR=" + tmp.path().string(), false);
  CAPTURE(j.out);
  REQUIRE(j.code == 0);
  const boost::json::object o = boost::json::parse(j.out).as_object();
  CHECK(o.at("ok").as_bool());
  const boost::json::object& row = o.at("schemes").as_array().at(0).as_object();
  const int64_t sets = row.at("kernel_sets").to_number<int64_t>();
  CHECK(sets >= 3);  // the router set, the shared kernels, a GEMM1 and a GEMM2
  CHECK(row.at("warm_disk_hits").to_number<int64_t>() == sets);
  const double longest = row.at("longest_set_ms").to_number<double>(),
               summed = row.at("nvrtc_ms_summed").to_number<double>();
  CHECK(longest > 0);
  CHECK(longest <= summed);
  CHECK(longest < summed);  // more than one set compiled
  CHECK(row.at("longest_set").as_string().starts_with("ct_moe_"));
  CHECK(entries(tmp.path()).empty());
}

TEST_CASE("moeq bench jit removes its cache directory when a compile fails") {
  TempDir tmp;
  // sm_99 has the form of an arch, so it passes the option check; NVRTC refuses it.
  CliRun r = run_moeq_cli("bench jit --scheme bf16 --arch sm_99", "TMPDIR=" + tmp.path().string());
  CAPTURE(r.out);
  CHECK(r.code == 1);
  CHECK(r.out.find("moeq: error:") != std::string::npos);
  CHECK(entries(tmp.path()).empty());
}

TEST_CASE("moeq bench apply --help lists --json") {
  CliRun h = run_moeq_cli("bench apply --help");
  CHECK(h.code == 0);
  CHECK(h.out.find("--json") != std::string::npos);
}

TEST_CASE("moeq bench apply --json without a driver stops before any GPU work") {
  if (cuda::available()) {
    MESSAGE("SKIPPED: this machine has a CUDA driver; the no-driver exit cannot be observed");
    return;
  }
  CliRun r = run_moeq_cli("bench apply --json --m 1,16");
  CAPTURE(r.out);
  CHECK(r.code == 1);
  CHECK(r.out.find("no CUDA driver") != std::string::npos);
}

TEST_CASE("gpu moeq bench apply --dims --json carries every timed case with its dims, times, floor and check") {
  if (!device_or_skip()) return;
  CliRun r = run_moeq_cli("bench apply --json --scheme bf16,w8a16 --dims 8,2,64,32 --dims tiny=16,4,128,48 --m 1,5 "
                          "--seconds 0.01",
                          "", false);
  CAPTURE(r.out);
  CHECK(r.code == 0);
  const boost::json::object o = boost::json::parse(r.out).as_object();
  CHECK(o.at("checks_passed").as_bool());
  CHECK(o.at("ok").as_bool());
  CHECK(o.at("not_timed").as_array().empty());
  // --no-check: nothing checked, and the JSON says so rather than "passed".
  CliRun nc = run_moeq_cli("bench apply --json --no-check --scheme bf16 --dims 8,2,64,32 --m 1 --seconds 0.01", "", false);
  CAPTURE(nc.out);
  CHECK(nc.code == 0);
  CHECK(boost::json::parse(nc.out).as_object().at("checks_passed").is_null());
  // --stage-graphs: every kernel of the sequence timed in place, from graphs of growing prefixes.
  CliRun sg = run_moeq_cli("bench apply --json --no-check --stage-graphs --scheme bf16 --dims 8,2,64,32 --m 1,5 "
                           "--seconds 0.01",
                           "", false);
  CAPTURE(sg.out);
  CHECK(sg.code == 0);
  // The parsed document outlives the loop (a range-for over a temporary's member dangles).
  const boost::json::value sg_doc = boost::json::parse(sg.out);
  REQUIRE_FALSE(sg_doc.at("rows").as_array().empty());
  for (const boost::json::value& v : sg_doc.at("rows").as_array()) {
    const boost::json::object& row = v.as_object();
    const boost::json::object& events = row.at("stages_us").as_object();
    REQUIRE(row.at("stages_graph_us").is_object());
    const boost::json::object& graphs = row.at("stages_graph_us").as_object();
    REQUIRE(graphs.size() == events.size());  // the same kernels, in the same order
    REQUIRE_FALSE(graphs.empty());
    auto g = graphs.begin();
    for (auto e = events.begin(); e != events.end(); ++e, ++g) CHECK(e->key() == g->key());
    // The first kernel's graph alone is a prefix, not the layer (the sequence stopped after it).
    CHECK(graphs.begin()->value().as_double() < 0.9 * row.at("us").as_double());
  }
  const boost::json::array& shapes = o.at("shapes").as_array();
  REQUIRE(shapes.size() == 2);  // --dims alone: no named shape runs
  CHECK(shapes.at(0).at("name").as_string() == "E8-k2-H64-I32");
  CHECK(shapes.at(1).at("name").as_string() == "tiny");
  CHECK(shapes.at(1).at("from").as_string() == "dims");
  const boost::json::array& rows = o.at("rows").as_array();
  REQUIRE(rows.size() == 2 * 2 * 2);  // shapes x schemes x M
  for (const boost::json::value& v : rows) {
    const boost::json::object& row = v.as_object();
    CAPTURE(boost::json::serialize(row));
    const bool tiny = row.at("shape").as_string() == "tiny";
    CHECK(row.at("E").as_int64() == (tiny ? 16 : 8));
    CHECK(row.at("top_k").as_int64() == (tiny ? 4 : 2));
    CHECK(row.at("H").as_int64() == (tiny ? 128 : 64));
    CHECK(row.at("I").as_int64() == (tiny ? 48 : 32));
    CHECK(row.at("us").as_double() > 0);
    CHECK(row.at("floor_us").as_double() > 0);
    CHECK(row.at("check").at("passed").as_bool());
    CHECK_FALSE(row.at("stages_us").as_object().empty());
    CHECK(row.at("stages_graph_us").is_null());  // only with --stage-graphs
  }
  bool tiny_checked = false;
  for (const boost::json::value& v : o.at("checks").as_array())
    tiny_checked = tiny_checked || (v.at("label").as_string() == "tiny" && v.at("m").as_int64() == 4);
  CHECK(tiny_checked);
}
#endif

TEST_CASE("moeq bench load without a CUDA driver exits non-zero saying so") {
  if (cuda::available()) {
    MESSAGE("SKIPPED: this machine has a CUDA driver; the no-driver message cannot be observed");
    return;
  }
  TempDir d;
  writer::write_synthetic_checkpoint(d / "ck", tiny(writer::WeightScheme::kFp8Channel));
  CliRun r = run_moeq_cli("bench load " + (d / "ck").string());
  CAPTURE(r.out);
  CHECK(r.code != 0);
  CHECK(r.out.find("no CUDA driver") != std::string::npos);
}

TEST_CASE("gpu staged upload round-trips every byte through the pinned chunks") {
  if (!device_or_skip()) return;
  std::mt19937_64 rng(5);
  std::vector<size_t> sizes = {0, 1, 255, 256, 257, (size_t{3} << 20) + 7, 12345, 64};
  for (int i = 0; i < 200; ++i) sizes.push_back(rng() % 20000);
  std::vector<std::vector<std::byte>> host(sizes.size());
  size_t total = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    host[i].resize(sizes[i]);
    for (auto& b : host[i]) b = std::byte(rng() & 0xff);
    total += (sizes[i] + 255) & ~size_t{255};
  }
  cuda::use_primary_context(0);
  cuda::DeviceMemory arena(total);
  std::vector<cuda::UploadJob> jobs;
  size_t at = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    jobs.push_back({host[i].data(), arena.get() + at, sizes[i], "job " + std::to_string(i)});
    at += (sizes[i] + 255) & ~size_t{255};
  }
  cuda::StagingConfig sc;
  sc.threads = 3;
  sc.chunk_bytes = size_t{1} << 20;
  sc.chunks = 4;
  cuda::StagedUploader up(sc);
  const cuda::UploadStats st = up.upload(jobs);
  size_t want = 0;
  for (size_t s : sizes) want += s;
  CHECK(st.bytes == want);
  CHECK(up.verify(jobs).empty());
  // A changed host byte is found and named.
  host[5][1000] ^= std::byte{1};
  const std::string diff = up.verify(jobs);
  CHECK(diff.find("job 5") != std::string::npos);
  CHECK(diff.find("byte 1000") != std::string::npos);
}

TEST_CASE("gpu moeq bench load on a small synthetic checkpoint verifies and reports") {
  if (!device_or_skip()) return;
  TempDir d;
  writer::write_synthetic_checkpoint(d / "ck", tiny(writer::WeightScheme::kUnquantized));
  CliRun r = run_moeq_cli("bench load --repeat 1 --online int8 --json " + (d / "ck").string());
  CAPTURE(r.out);
  REQUIRE(r.code == 0);
  const boost::json::object o = boost::json::parse(r.out.substr(r.out.find('{'))).as_object();
  CHECK(o.at("verified").as_bool());
  CHECK(o.at("pinned_h2d_gbps").as_double() > 0);
  CHECK(o.at("plugin").as_string() == "online_quant");
}
