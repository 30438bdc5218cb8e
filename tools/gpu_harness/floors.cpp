#include "floors.hpp"

#include <moeq/error.hpp>

#include <cublasLt.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

namespace moeq::gpu_harness {
namespace {

struct Lt {
  decltype(&::cublasLtCreate) create;
  decltype(&::cublasLtDestroy) destroy;
  decltype(&::cublasLtMatmulDescCreate) desc_create;
  decltype(&::cublasLtMatmulDescDestroy) desc_destroy;
  decltype(&::cublasLtMatmulDescSetAttribute) desc_set;
  decltype(&::cublasLtMatrixLayoutCreate) layout_create;
  decltype(&::cublasLtMatrixLayoutDestroy) layout_destroy;
  decltype(&::cublasLtMatmulPreferenceCreate) pref_create;
  decltype(&::cublasLtMatmulPreferenceDestroy) pref_destroy;
  decltype(&::cublasLtMatmulPreferenceSetAttribute) pref_set;
  decltype(&::cublasLtMatmulAlgoGetHeuristic) heuristic;
  decltype(&::cublasLtMatmul) matmul;
  std::string path;
};

bool open_lt(Lt& lt, std::string& why) {
  std::vector<std::string> names;
  if (const char* p = std::getenv("MOEQ_CUBLASLT")) names.push_back(p);
  names.push_back("libcublasLt.so.13");
  names.push_back("libcublasLt.so.12");
  names.push_back("libcublasLt.so");
  void* lib = nullptr;
  for (const auto& n : names)
    if ((lib = dlopen(n.c_str(), RTLD_NOW | RTLD_LOCAL)) != nullptr) {
      lt.path = n;
      break;
    }
  if (lib == nullptr) {
    why = "cuBLASLt not found (set MOEQ_CUBLASLT to libcublasLt.so.*)";
    return false;
  }
  bool ok = true;
  auto sym = [&](auto& slot, const char* name) {
    slot = reinterpret_cast<std::remove_reference_t<decltype(slot)>>(dlsym(lib, name));
    if (!slot) {
      ok = false;
      why = std::string("cuBLASLt lacks ") + name;
    }
  };
  sym(lt.create, "cublasLtCreate");
  sym(lt.destroy, "cublasLtDestroy");
  sym(lt.desc_create, "cublasLtMatmulDescCreate");
  sym(lt.desc_destroy, "cublasLtMatmulDescDestroy");
  sym(lt.desc_set, "cublasLtMatmulDescSetAttribute");
  sym(lt.layout_create, "cublasLtMatrixLayoutCreate");
  sym(lt.layout_destroy, "cublasLtMatrixLayoutDestroy");
  sym(lt.pref_create, "cublasLtMatmulPreferenceCreate");
  sym(lt.pref_destroy, "cublasLtMatmulPreferenceDestroy");
  sym(lt.pref_set, "cublasLtMatmulPreferenceSetAttribute");
  sym(lt.heuristic, "cublasLtMatmulAlgoGetHeuristic");
  sym(lt.matmul, "cublasLtMatmul");
  return ok;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// TFLOP/s of D[M,N] = A^T B with A [K,M], B [K,N] column-major (TN), or 0 with `why` set.
double matmul_rate(Driver& d, Stream s, const Lt& lt, cublasLtHandle_t h, cudaDataType_t in_type, int fast_accum,
                   DevPtr A, DevPtr B, DevPtr D, DevPtr ws, size_t ws_bytes, std::string& why) {
  const int64_t n = 8192;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  double rate = 0;
  do {
    if (lt.desc_create(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) != CUBLAS_STATUS_SUCCESS) {
      why = "cublasLtMatmulDescCreate failed";
      break;
    }
    const cublasOperation_t t = CUBLAS_OP_T, nn = CUBLAS_OP_N;
    lt.desc_set(desc, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof(t));
    lt.desc_set(desc, CUBLASLT_MATMUL_DESC_TRANSB, &nn, sizeof(nn));
    if (in_type == CUDA_R_8F_E4M3) {
      const int8_t fa = static_cast<int8_t>(fast_accum);
      lt.desc_set(desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fa, sizeof(fa));
    }
    lt.layout_create(&la, in_type, n, n, n);
    lt.layout_create(&lb, in_type, n, n, n);
    lt.layout_create(&ld, CUDA_R_16BF, n, n, n);
    lt.pref_create(&pref);
    lt.pref_set(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof(ws_bytes));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    if (lt.heuristic(h, desc, la, lb, ld, ld, pref, 1, &result, &found) != CUBLAS_STATUS_SUCCESS || found == 0) {
      why = "no cuBLASLt algorithm";
      break;
    }
    const float alpha = 1.0f, beta = 0.0f;
    auto run = [&] {
      return lt.matmul(h, desc, &alpha, reinterpret_cast<void*>(A), la, reinterpret_cast<void*>(B), lb, &beta,
                       reinterpret_cast<void*>(D), ld, reinterpret_cast<void*>(D), ld, &result.algo,
                       reinterpret_cast<void*>(ws), ws_bytes, static_cast<cudaStream_t>(s));
    };
    if (run() != CUBLAS_STATUS_SUCCESS) {
      why = "cublasLtMatmul failed";
      break;
    }
    Event e0 = d.event(), e1 = d.event();
    for (int i = 0; i < 3; ++i) run();
    std::vector<double> ms;
    for (int i = 0; i < 10; ++i) {
      d.record(e0, s);
      run();
      d.record(e1, s);
      ms.push_back(d.elapsed_ms(e0, e1));
    }
    rate = 2.0 * n * n * n / (median(ms) * 1e-3) / 1e12;
  } while (false);
  if (pref) lt.pref_destroy(pref);
  if (la) lt.layout_destroy(la);
  if (lb) lt.layout_destroy(lb);
  if (ld) lt.layout_destroy(ld);
  if (desc) lt.desc_destroy(desc);
  return rate;
}

}  // namespace

Floors measure_floors(Driver& d, Stream s, BenchKernels& fill) {
  Floors f;
  {
    const size_t bytes = size_t{1} << 30;
    DeviceBuffer a(bytes), b(bytes);
    d.memset_async(a.get(), 1, bytes, s);
    Event e0 = d.event(), e1 = d.event();
    for (int i = 0; i < 2; ++i) d.copy_async(b.get(), a.get(), bytes, s);
    std::vector<double> ms;
    for (int i = 0; i < 10; ++i) {
      d.record(e0, s);
      d.copy_async(b.get(), a.get(), bytes, s);
      d.record(e1, s);
      ms.push_back(d.elapsed_ms(e0, e1));
    }
    f.copy_gbps = 2.0 * static_cast<double>(bytes) / (median(ms) * 1e-3) / 1e9;
  }
  Lt lt{};
  std::string why;
  if (!open_lt(lt, why)) {
    f.fp8_note = f.bf16_note = why;
    return f;
  }
  f.cublaslt = lt.path;
  cublasLtHandle_t h = nullptr;
  if (lt.create(&h) != CUBLAS_STATUS_SUCCESS) {
    f.fp8_note = f.bf16_note = "cublasLtCreate failed";
    return f;
  }
  const size_t n = 8192, ws_bytes = size_t{64} << 20;
  DeviceBuffer A(n * n * 2), B(n * n * 2), D(n * n * 2), ws(ws_bytes);
  fill.fill(A.get(), n * n, FillType::kFp8, 11, 448.0f, 0.0f, s);
  fill.fill(B.get(), n * n, FillType::kFp8, 12, 448.0f, 0.0f, s);
  double best = 0;
  for (int fast = 0; fast <= 1; ++fast) {
    std::string w;
    const double r = matmul_rate(d, s, lt, h, CUDA_R_8F_E4M3, fast, A.get(), B.get(), D.get(), ws.get(), ws_bytes, w);
    if (r > best) {
      best = r;
      f.fp8_note = std::string("cuBLASLt e4m3 TN 8192^3, ") + (fast ? "fast accumulation" : "fp32 accumulation");
    }
    if (r == 0 && f.fp8_note.empty()) f.fp8_note = w;
  }
  f.fp8_tflops = best;
  fill.fill(A.get(), n * n, FillType::kBf16, 13, 1.0f, 0.0f, s);
  fill.fill(B.get(), n * n, FillType::kBf16, 14, 1.0f, 0.0f, s);
  std::string w;
  f.bf16_tflops = matmul_rate(d, s, lt, h, CUDA_R_16BF, 0, A.get(), B.get(), D.get(), ws.get(), ws_bytes, w);
  f.bf16_note = f.bf16_tflops > 0 ? "cuBLASLt bf16 TN 8192^3" : w;
  lt.destroy(h);
  return f;
}

}  // namespace moeq::gpu_harness
