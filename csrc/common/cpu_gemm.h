// Row-major tile products for the CPU kernels. A flash-style kernel multiplies small tiles (tens
// to hundreds of rows) inside at::parallel_for; going through at::Tensor there would cost an
// allocation and a dispatch per product, so these call the GEMM micro-kernels directly.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

namespace hvision::cpu {

// Where the float products go: oneDNN's batch-reduce GEMM micro-kernel (through ATen), or the
// BLAS that torch links (MKL in the x86-64 wheels). Double always takes the BLAS.
enum class GemmPath : int { brgemm, blas };
constexpr std::array<std::string_view, 2> kGemmPathNames = {"brgemm", "blas"};

// The path in use: brgemm where the kernels run AVX-512 (there it matched or beat the BLAS on
// the Hopfield kernel's tiles), else the BLAS (with AVX2 oneDNN's brgemm was no faster). ATen's
// brgemm itself falls back to the BLAS where oneDNN lacks a kernel.
GemmPath gemm_path();
// Switches the path for the whole process (a benchmark times both).
void set_gemm_path(GemmPath path);

// Which operands of gemm are stored transposed.
struct Transposed {
  bool a = false, b = false;
};

// C (m x n) = alpha · op(A) · op(B) + beta · C, all row-major with row strides lda, ldb, ldc;
// op(A) is A (m x k), or with `transposed.a` the transpose of A stored (k x m), and op(B) is
// B (k x n), or with `transposed.b` the transpose of B stored (n x k). A transposed operand
// takes the BLAS on either path. Defined for float and double; dimensions and strides must fit
// in 32 bits (tiles always do).
template <typename T>
void gemm(Transposed transposed, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

}  // namespace hvision::cpu
