// Row-major tile products for the CPU kernels. A flash-style kernel multiplies small tiles (tens
// to hundreds of rows) inside at::parallel_for; going through at::Tensor there would cost an
// allocation and a dispatch per product, so these call the GEMM micro-kernels directly.
#pragma once

#include <cstdint>

namespace hvision::cpu {

// C (m x n) = alpha · A (m x k) · op(B) + beta · C, all row-major with row strides lda, ldb, ldc;
// op(B) is B (k x n), or with `transpose_b` the transpose of B (n x k). Defined for float and
// double; dimensions and strides must fit in 32 bits (tiles always do).
template <typename T>
void gemm(bool transpose_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

}  // namespace hvision::cpu
