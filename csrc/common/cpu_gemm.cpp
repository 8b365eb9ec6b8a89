// The tile GEMM of csrc/common/cpu_gemm.h. In order of preference:
//   1. on the brgemm path, ATen's batch-reduce GEMM (float, no operand transposed, alpha 1,
//      beta 0 or 1): oneDNN's micro-kernel;
//   2. the Fortran BLAS that torch's CPU library exports (MKL in the x86-64 wheels): no tensor,
//      no dispatch;
//   3. at::addmm_ on views of the tiles, for a torch that exports no BLAS.
#include "common/cpu_gemm.h"

#include "common/cpu_isa.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <dlfcn.h>

#include <atomic>
#include <type_traits>

namespace hvision::cpu {
namespace {

// Set on first use, once the instruction set is chosen.
std::atomic<GemmPath>& gemm_path_setting() {
  static std::atomic<GemmPath> path{active_isa() == Isa::avx512 ? GemmPath::brgemm
                                                                 : GemmPath::blas};
  return path;
}

template <typename T>
using FortranGemm = void (*)(const char*, const char*, const int*, const int*, const int*,
                             const T*, const T*, const int*, const T*, const int*, const T*, T*,
                             const int*);

// The BLAS symbol as torch's CPU library resolves it, looked up in that library (and its
// dependencies) rather than by name in the process: another package may have put a BLAS of its
// own into the global scope first (decord loads every NVIDIA pip library with RTLD_GLOBAL,
// NVBLAS among them, whose sgemm_ fails without a configuration file). Null where torch
// exports none.
void* torch_blas_symbol(const char* name) {
  Dl_info torch_library;
  if (dladdr(reinterpret_cast<void*>(&at::get_num_threads), &torch_library) == 0) return nullptr;
  void* handle = dlopen(torch_library.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
  return handle ? dlsym(handle, name) : nullptr;
}

template <typename T>
FortranGemm<T> fortran_gemm() {
  static const auto blas = reinterpret_cast<FortranGemm<T>>(
      torch_blas_symbol(std::is_same_v<T, float> ? "sgemm_" : "dgemm_"));
  return blas;
}

template <typename T>
at::Tensor matrix_view(const T* data, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<T*>(data), {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

template <typename T>
bool try_brgemm(Transposed transposed, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
#if defined(CPUBLAS_BRGEMM_F32F32F32)
  if constexpr (std::is_same_v<T, float>) {
    if (gemm_path() == GemmPath::brgemm && !transposed.a && !transposed.b && alpha == 1.0f &&
        (beta == 0.0f || beta == 1.0f)) {
      at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, /*add_C=*/beta == 1.0f, a, b, c,
                                  /*is_vnni=*/false);
      return true;
    }
  }
#endif
  return false;
}

}  // namespace

GemmPath gemm_path() { return gemm_path_setting().load(std::memory_order_relaxed); }
void set_gemm_path(GemmPath path) { gemm_path_setting().store(path, std::memory_order_relaxed); }

template <typename T>
void gemm(Transposed transposed, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // C = beta C; the BLAS would reject the zero leading dimensions
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
    }
    return;
  }
  if (try_brgemm(transposed, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)) return;
  if (const FortranGemm<T> blas = fortran_gemm<T>()) {
    // The BLAS is column-major, where a row-major matrix reads as its transpose:
    // Cᵀ = op(B)ᵀ op(A)ᵀ.
    const char op_b = transposed.b ? 'T' : 'N', op_a = transposed.a ? 'T' : 'N';
    const int rows = static_cast<int>(n), cols = static_cast<int>(m), inner = static_cast<int>(k);
    const int ld_b = static_cast<int>(ldb), ld_a = static_cast<int>(lda), ld_c = static_cast<int>(ldc);
    blas(&op_b, &op_a, &rows, &cols, &inner, &alpha, b, &ld_b, a, &ld_a, &beta, c, &ld_c);
    return;
  }
  const at::Tensor a_view =
      transposed.a ? matrix_view(a, k, m, lda).t() : matrix_view(a, m, k, lda);
  const at::Tensor b_view =
      transposed.b ? matrix_view(b, n, k, ldb).t() : matrix_view(b, k, n, ldb);
  matrix_view(c, m, n, ldc).addmm_(a_view, b_view, beta, alpha);
}

template void gemm<float>(Transposed, int64_t, int64_t, int64_t, float, const float*, int64_t,
                          const float*, int64_t, float, float*, int64_t);
template void gemm<double>(Transposed, int64_t, int64_t, int64_t, double, const double*,
                           int64_t, const double*, int64_t, double, double*, int64_t);

}  // namespace hvision::cpu
