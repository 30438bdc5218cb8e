// Host services for layers on a CUDA device, at the ABI: device_info, param_create on kDLCUDA,
// copy_to_param / param_fill carried through pinned staging (with casts), the ABI 1.1 device
// source, and the errors every wrong combination gets. The error cases run everywhere; the
// device round trips skip, saying why, without a driver or device.
#include "support.hpp"

#include <moeq/cuda_driver.hpp>
#include <moeq/staged_upload.hpp>

#include <random>

using namespace moeq;

namespace {

struct Param {
  const DLTensor* tensor = nullptr;
};

moeq_status* create(moeq_layer* layer, const char* name, std::vector<int64_t> shape, DType dt, Param& out) {
  moeq_param_create_args a{};
  a.struct_size = sizeof(a);
  a.layer = layer;
  a.name = name;
  a.shape = shape.data();
  a.ndim = static_cast<int32_t>(shape.size());
  a.dtype = to_dl(dt);
  moeq_status* st = host::api()->param_create(&a);
  out.tensor = a.tensor;
  return st;
}

moeq_status* copy(moeq_layer* layer, const Param& p, std::vector<int64_t> offset, const DLTensor& src,
                  uint32_t flags = 0) {
  moeq_copy_to_param_args c{};
  c.struct_size = sizeof(c);
  c.layer = layer;
  c.param = p.tensor;
  c.dst_offset = offset.data();
  c.source = &src;
  c.flags = flags;
  return host::api()->copy_to_param(&c);
}

std::string message_of(moeq_status* st, moeq_status_code* code = nullptr) {
  moeq_status_code c = MOEQ_STATUS_CODE_OK;
  std::string m;
  REQUIRE(host::take_status(st, c, m));
  if (code) *code = c;
  return m;
}

}  // namespace

TEST_CASE("a device source into a host parameter, or a source on another device type, is a clear error") {
  std::unique_ptr<moeq_layer> layer = host::make_layer("model.layers.0.mlp", {kDLCPU, 0});
  Param p;
  host::throw_if_error(create(layer.get(), "w", {2, 4}, DType::F32, p), "param_create");
  std::vector<float> v(8, 1.0f);
  int64_t shape[2] = {2, 4}, strides[2] = {4, 1};
  DLTensor src{v.data(), {kDLCUDA, 0}, 2, to_dl(DType::F32), shape, strides, 0};
  moeq_status_code code;
  CHECK(message_of(copy(layer.get(), p, {0, 0}, src), &code) ==
        "copy_to_param: a source on cuda:0 needs a parameter on that device; parameter 'w' is in host memory");
  CHECK(code == MOEQ_STATUS_CODE_INVALID_ARGUMENT);
  src.device = {kDLROCM, 0};
  CHECK(message_of(copy(layer.get(), p, {0, 0}, src)).find("source must be host memory (or, since ABI 1.1") !=
        std::string::npos);
  // Nothing was written: the ledger still has the whole parameter open.
  CHECK(host::coverage(*layer).at(0).written == 0);
}

TEST_CASE("device_info answers for the CPU, names a missing driver, and refuses other device types") {
  moeq_device_info_args a{};
  a.struct_size = sizeof(a);
  a.device = {kDLCPU, 0};
  CHECK(host::api()->device_info(&a) == nullptr);
  CHECK(a.available == 1);
  a.device = {kDLROCM, 0};
  moeq_status_code code;
  CHECK(message_of(host::api()->device_info(&a), &code).find("neither kDLCPU nor kDLCUDA") != std::string::npos);
  CHECK(code == MOEQ_STATUS_CODE_INVALID_ARGUMENT);
  a.device = {kDLCUDA, 0};
  if (!cuda::available()) {
    CHECK(message_of(host::api()->device_info(&a), &code).find("no CUDA driver") != std::string::npos);
    CHECK(code == MOEQ_STATUS_CODE_UNAVAILABLE);
  } else if (cuda::device_count() > 0) {
    CHECK(host::api()->device_info(&a) == nullptr);
    CHECK(a.sm_major >= 7);
    a.device = {kDLCUDA, 999};
    CHECK(message_of(host::api()->device_info(&a), &code).find("cuda:999 does not exist") != std::string::npos);
  }
}

TEST_CASE("param_create on a CUDA layer without a driver fails naming the layer and the reason") {
  if (cuda::available()) {
    MESSAGE("SKIPPED: this machine has a CUDA driver; the no-driver error is checked where there is none");
    return;
  }
  const int64_t before = host::live_param_bytes();
  std::unique_ptr<moeq_layer> layer = host::make_layer("model.layers.3.mlp", {kDLCUDA, 0});
  Param p;
  moeq_status_code code;
  const std::string m = message_of(create(layer.get(), "w13_weight", {4, 8}, DType::BF16, p), &code);
  CHECK(code == MOEQ_STATUS_CODE_UNAVAILABLE);
  CHECK(m.find("param_create w13_weight: layer model.layers.3.mlp is on cuda:0, but no CUDA driver") !=
        std::string::npos);
  CHECK(host::live_param_bytes() == before);
}

TEST_CASE("cuda: parameters round-trip through staging (casts, fills, ragged rows, pieces past a chunk)") {
  if (!test::cuda_device_or_skip("device parameter round trip")) return;
  std::unique_ptr<moeq_layer> layer = host::make_layer("l", {kDLCUDA, 0});
  // 3 x 3,000,000 F32 = 36 MB: rows larger than one 8 MiB staging chunk.
  const int64_t R = 3, C = 3000000;
  Param big, small;
  host::throw_if_error(create(layer.get(), "big", {R, C}, DType::F32, big), "param_create");
  host::throw_if_error(create(layer.get(), "small", {5, 7}, DType::BF16, small), "param_create");
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  std::vector<uint16_t> src(static_cast<size_t>(R * C));  // BF16 source, cast to F32 on the way
  for (auto& v : src) v = float_to_bf16(nd(rng));
  int64_t shape[2] = {R, C}, strides[2] = {C, 1};
  DLTensor s{src.data(), {kDLCPU, 0}, 2, to_dl(DType::BF16), shape, strides, 0};
  host::throw_if_error(copy(layer.get(), big, {0, 0}, s), "copy big");
  // small: rows 0..2 from a strided F32 view (every other column), rows 3..4 filled with 0.5.
  std::vector<float> wide(3 * 14);
  for (size_t i = 0; i < wide.size(); ++i) wide[i] = static_cast<float>(i) * 0.25f;
  int64_t sshape[2] = {3, 7}, sstr[2] = {14, 2};
  DLTensor sv{wide.data(), {kDLCPU, 0}, 2, to_dl(DType::F32), sshape, sstr, 0};
  host::throw_if_error(copy(layer.get(), small, {0, 0}, sv), "copy small");
  int64_t off[2] = {3, 0}, ext[2] = {2, 7};
  moeq_param_fill_args f{sizeof(f), layer.get(), small.tensor, off, ext, 0.5, "test padding"};
  host::throw_if_error(host::api()->param_fill(&f), "param_fill");
  host::finish_device_writes(*layer);
  for (const auto& c : host::coverage(*layer)) CHECK(c.written + c.defaulted == c.numel);

  std::vector<float> got(static_cast<size_t>(R * C));
  host::read_param(*layer, *layer->params[0], got.data(), got.size() * 4);
  bool same = true;
  for (size_t i = 0; i < got.size() && same; ++i) same = got[i] == bf16_to_float(src[i]);
  CHECK(same);
  std::vector<uint16_t> sm(35);
  host::read_param(*layer, *layer->params[1], sm.data(), sm.size() * 2);
  for (int r = 0; r < 5; ++r)
    for (int c = 0; c < 7; ++c)
      CHECK(bf16_to_float(sm[r * 7 + c]) == (r < 3 ? bf16_to_float(float_to_bf16(wide[r * 14 + c * 2])) : 0.5f));

  // ABI 1.1: a device source (the bytes just written to `big`, row 1) into a new parameter.
  Param dst;
  host::throw_if_error(create(layer.get(), "copy_of_row1", {C}, DType::F32, dst), "param_create");
  int64_t rshape[1] = {C}, rstr[1] = {1};
  DLTensor dev_src{static_cast<char*>(big.tensor->data) + C * 4, {kDLCUDA, 0}, 1, to_dl(DType::F32), rshape, rstr, 0};
  host::throw_if_error(copy(layer.get(), dst, {0}, dev_src), "device source");
  host::finish_device_writes(*layer);
  std::vector<float> row(static_cast<size_t>(C));
  host::read_param(*layer, *layer->params[2], row.data(), row.size() * 4);
  CHECK(std::equal(row.begin(), row.end(), got.begin() + C));
  // A device source is copied, never cast, and its scale check reads it back.
  Param half;
  host::throw_if_error(create(layer.get(), "half", {C}, DType::BF16, half), "param_create");
  CHECK(message_of(copy(layer.get(), half, {0}, dev_src)).find("a device source is copied, not cast") !=
        std::string::npos);
  Param scales;
  host::throw_if_error(create(layer.get(), "scales", {C}, DType::F32, scales), "param_create");
  CHECK(message_of(copy(layer.get(), scales, {0}, dev_src, MOEQ_COPY_CHECK_SCALE)).find("scales must be finite and > 0") !=
        std::string::npos);
}
