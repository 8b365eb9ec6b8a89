// merge_tokens CPU kernels.
//
// best_matches: the similarities of a tile of A tokens against a tile of B tokens are one BLAS
// call (sgemm/dgemm on the metric rows in place, into a per-thread tile buffer); the tile is then
// scaled by the inverse norms and folded into each A token's running best match, so the
// Na x Nb similarity matrix never exists. Tasks are (batch, tile of A rows), each walking the B
// tiles in order, so the result does not depend on the thread count.
// segment_sum and gather_rows walk output rows in parallel, each row's sources in token order.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/cpu_dispatch.h"
#include "common/step_math.h"
#include "merge_tokens/merge_tokens.h"

// The Fortran BLAS that libtorch links (MKL or OpenBLAS) exports these; weak, so that a torch
// built without BLAS still loads the library and takes the ATen fallback below.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc) __attribute__((weak));
}

namespace hvision::merge_tokens {
namespace {

constexpr int64_t kRowTile = 64;   // A tokens per task
constexpr int64_t kColTile = 512;  // B tokens per BLAS call

// A row-major matrix of `rows` rows `stride` values apart (the A or the B tokens of the metric).
template <typename T>
struct Rows {
  const T* data;
  int64_t rows, stride;
};

// tile[i][j] = a_i · b_j for `rows` A rows and `cols` B rows of length k (tile row-major,
// `cols` wide). In column-major BLAS terms: tileᵀ (cols x rows) = B (cols x k) · Aᵀ.
template <typename T, typename Gemm>
void tile_dot_products(Gemm* gemm, const T* a, const T* b, int64_t rows, int64_t cols, int64_t k,
                       int64_t stride, T* tile) {
  if (gemm != nullptr) {
    const int m = static_cast<int>(cols), n = static_cast<int>(rows), depth = static_cast<int>(k);
    const int ld = static_cast<int>(stride), ldc = static_cast<int>(cols);
    const T one = 1, zero = 0;
    gemm("T", "N", &m, &n, &depth, &one, b, &ld, a, &ld, &zero, tile, &ldc);
    return;
  }
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  at::Tensor out = at::from_blob(tile, {rows, cols}, options);
  at::mm_out(out, at::from_blob(const_cast<T*>(a), {rows, k}, {stride, 1}, options),
             at::from_blob(const_cast<T*>(b), {cols, k}, {stride, 1}, options).t());
}

void tile_dot_products(const float* a, const float* b, int64_t rows, int64_t cols, int64_t k,
                       int64_t stride, float* tile) {
  tile_dot_products(sgemm_, a, b, rows, cols, k, stride, tile);
}
void tile_dot_products(const double* a, const double* b, int64_t rows, int64_t cols, int64_t k,
                       int64_t stride, double* tile) {
  tile_dot_products(dgemm_, a, b, rows, cols, k, stride, tile);
}

// Turns one row of dot products (B tokens first .. first + cols) into cosine similarities and
// folds them into the A token's best match. A later tile only wins with a strictly higher
// value, so equal values keep the lower index.
template <typename T>
HV_INLINE void fold_row(T* row, const T* inverse_norm_b, T inverse_norm_a, int64_t first,
                        int64_t cols, Match<T>& best) {
  T tile_max = math::negative_infinity<T>();
#pragma omp simd reduction(max : tile_max)
  for (int64_t j = 0; j < cols; ++j) {
    row[j] = cosine_similarity(row[j], inverse_norm_a, inverse_norm_b[j]);
    tile_max = row[j] > tile_max ? row[j] : tile_max;
  }
  if (!(tile_max > best.value)) return;
  int64_t j = 0;
  while (row[j] != tile_max) ++j;
  best = {tile_max, first + j};
}

HV_CPU_CLONES void fold_tile(float* tile, const float* inverse_norm_b, const float* inverse_norm_a,
                             int64_t a_stride, int64_t rows, int64_t first, int64_t cols,
                             Match<float>* best) {
  for (int64_t i = 0; i < rows; ++i) {
    fold_row(tile + i * cols, inverse_norm_b, inverse_norm_a[i * a_stride], first, cols, best[i]);
  }
}
void fold_tile(double* tile, const double* inverse_norm_b, const double* inverse_norm_a,
               int64_t a_stride, int64_t rows, int64_t first, int64_t cols, Match<double>* best) {
  for (int64_t i = 0; i < rows; ++i) {
    fold_row(tile + i * cols, inverse_norm_b, inverse_norm_a[i * a_stride], first, cols, best[i]);
  }
}

// 1 / ||metric row|| of every token, (batch, N).
template <typename T>
at::Tensor inverse_norms(const at::Tensor& metric) {
  const int64_t tokens = metric.size(0) * metric.size(1), k = metric.size(2);
  at::Tensor out = at::empty({metric.size(0), metric.size(1)}, metric.options());
  const T* data = metric.const_data_ptr<T>();
  T* norms = out.mutable_data_ptr<T>();
  at::parallel_for(0, tokens, 64, [&](int64_t begin, int64_t end) {
    for (int64_t token = begin; token < end; ++token) {
      const T* row = data + token * k;
      T sum = 0;
      for (int64_t c = 0; c < k; ++c) sum += row[c] * row[c];
      norms[token] = inverse_norm(sum);
    }
  });
  return out;
}

template <typename T>
void best_matches_kernel(const at::Tensor& metric, const std::optional<at::Tensor>& importance,
                         int64_t protect, T importance_weight, at::Tensor& score,
                         at::Tensor& best) {
  const int64_t batch = metric.size(0), tokens = metric.size(1), k = metric.size(2);
  const int64_t a_count = score.size(1), b_count = (tokens - protect) / 2;
  const int64_t row_tiles = (a_count + kRowTile - 1) / kRowTile;
  const at::Tensor inverse_norm = inverse_norms<T>(metric);
  const T* metric_data = metric.const_data_ptr<T>();
  const T* norm_data = inverse_norm.const_data_ptr<T>();
  const T* importance_data = importance ? importance->const_data_ptr<T>() : nullptr;
  T* score_data = score.mutable_data_ptr<T>();
  int64_t* best_data = best.mutable_data_ptr<int64_t>();
  at::parallel_for(0, batch * row_tiles, 1, [&](int64_t begin, int64_t end) {
    // A 64-byte aligned buffer (ATen's allocator), so BLAS takes the same path in every run.
    at::Tensor tile_buffer = at::empty({kRowTile * kColTile}, metric.options());
    T* tile = tile_buffer.mutable_data_ptr<T>();
    Match<T> matches[kRowTile];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / row_tiles, first_a = task % row_tiles * kRowTile;
      const int64_t rows = std::min(kRowTile, a_count - first_a);
      const int64_t a_token = protect + 2 * first_a;  // A tokens are 2 apart, B tokens too
      const T* a = metric_data + (b * tokens + a_token) * k;
      const T* b_rows = metric_data + (b * tokens + protect + 1) * k;
      const T* norms = norm_data + b * tokens;
      std::fill_n(matches, rows, Match<T>{math::negative_infinity<T>(), 0});
      for (int64_t first_b = 0; first_b < b_count; first_b += kColTile) {
        const int64_t cols = std::min(kColTile, b_count - first_b);
        tile_dot_products(a, b_rows + 2 * first_b * k, rows, cols, k, 2 * k, tile);
        std::vector<T> b_norms(cols);
        for (int64_t j = 0; j < cols; ++j) b_norms[j] = norms[protect + 1 + 2 * (first_b + j)];
        fold_tile(tile, b_norms.data(), norms + a_token, 2, rows, first_b, cols, matches);
      }
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t out = b * a_count + first_a + i;
        const T importance_i = importance_data ? importance_data[b * tokens + a_token + 2 * i] : T(0);
        score_data[out] = merge_score(matches[i].value, importance_i, importance_weight);
        best_data[out] = matches[i].index;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> best_matches_cpu(const at::Tensor& metric,
                                                    const std::optional<at::Tensor>& importance,
                                                    int64_t protect, double importance_weight) {
  const at::ScalarType acc = at::toOpMathType(metric.scalar_type());
  const at::Tensor metric_acc = metric.to(acc).contiguous();
  const int64_t a_count = (metric.size(1) - protect + 1) / 2;
  at::Tensor score = at::empty({metric.size(0), a_count}, metric_acc.options());
  at::Tensor best = at::empty({metric.size(0), a_count}, metric_acc.options().dtype(at::kLong));
  if (score.numel() == 0) return {score, best};
  AT_DISPATCH_FLOATING_TYPES(acc, "merge_tokens_best_matches_cpu", [&] {
    best_matches_kernel<scalar_t>(metric_acc, importance, protect,
                                  static_cast<scalar_t>(importance_weight), score, best);
  });
  return {score, best};
}

// One output row: acc = Σ weight · source over its sources in token order.
template <typename scalar_t, typename T>
HV_INLINE void accumulate_row(T* acc, const scalar_t* source, T weight, int64_t channels) {
#pragma omp simd
  for (int64_t c = 0; c < channels; ++c) acc[c] = merge_accumulate(acc[c], weight, T(source[c]));
}

template <typename scalar_t>
void segment_sum_kernel(const at::Tensor& values, const std::optional<at::Tensor>& weights,
                        const RowSources& rows, bool average, at::Tensor& out,
                        at::Tensor& totals) {
  using T = at::opmath_type<scalar_t>;
  const int64_t tokens = values.size(1), channels = values.size(2), count = rows.rows;
  const scalar_t* value_data = values.const_data_ptr<scalar_t>();
  const T* weight_data = weights ? weights->const_data_ptr<T>() : nullptr;
  const int64_t* sources = rows.sources.const_data_ptr<int64_t>();
  const int64_t* offsets = rows.offsets.const_data_ptr<int64_t>();
  scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
  T* total_data = totals.mutable_data_ptr<T>();
  at::parallel_for(0, values.size(0) * count, 16, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(channels);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / count;
      const int64_t* row_offsets = offsets + b * (count + 1) + row % count;
      std::fill(acc.begin(), acc.end(), T(0));
      T total = 0;
      for (int64_t k = row_offsets[0]; k < row_offsets[1]; ++k) {
        const int64_t token = b * tokens + sources[b * tokens + k];
        const T weight = weight_data ? weight_data[token] : T(1);
        accumulate_row(acc.data(), value_data + token * channels, weight, channels);
        total += weight;
      }
      scalar_t* out_row = out_data + row * channels;
#pragma omp simd
      for (int64_t c = 0; c < channels; ++c) {
        out_row[c] = static_cast<scalar_t>(average ? merge_average(acc[c], total) : acc[c]);
      }
      total_data[row] = total;
    }
  });
}

std::tuple<at::Tensor, at::Tensor> segment_sum_cpu(const at::Tensor& values,
                                                   const std::optional<at::Tensor>& weights,
                                                   const RowSources& rows, bool average) {
  at::Tensor out = at::empty({values.size(0), rows.rows, values.size(2)}, values.options());
  at::Tensor totals = at::empty({values.size(0), rows.rows},
                                values.options().dtype(at::toOpMathType(values.scalar_type())));
  if (totals.numel() == 0) return {out, totals};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(),
                                  "merge_tokens_segment_sum_cpu", [&] {
                                    segment_sum_kernel<scalar_t>(values, weights, rows, average,
                                                                 out, totals);
                                  });
  return {out, totals};
}

template <typename scalar_t>
void gather_rows_kernel(const at::Tensor& values, const at::Tensor& assign,
                        const std::optional<at::Tensor>& scale, at::Tensor& out) {
  using T = at::opmath_type<scalar_t>;
  const int64_t rows = values.size(1), tokens = assign.size(1), channels = values.size(2);
  const scalar_t* value_data = values.const_data_ptr<scalar_t>();
  const int64_t* assign_data = assign.const_data_ptr<int64_t>();
  const T* scale_data = scale ? scale->const_data_ptr<T>() : nullptr;
  scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, assign.numel(), 16, [&](int64_t begin, int64_t end) {
    for (int64_t token = begin; token < end; ++token) {
      const int64_t b = token / tokens;
      const scalar_t* source = value_data + (b * rows + assign_data[token]) * channels;
      scalar_t* target = out_data + token * channels;
      const T factor = scale_data ? scale_data[token] : T(1);
#pragma omp simd
      for (int64_t c = 0; c < channels; ++c) target[c] = static_cast<scalar_t>(T(source[c]) * factor);
    }
  });
}

at::Tensor gather_rows_cpu(const at::Tensor& values, const at::Tensor& assign,
                           const std::optional<at::Tensor>& scale) {
  at::Tensor out = at::empty({assign.size(0), assign.size(1), values.size(2)}, values.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(),
                                  "merge_tokens_gather_rows_cpu",
                                  [&] { gather_rows_kernel<scalar_t>(values, assign, scale, out); });
  return out;
}

constexpr Kernels kCpuKernels{&best_matches_cpu, &segment_sum_cpu, &gather_rows_cpu};

}  // namespace

TORCH_LIBRARY_IMPL(hvision, CPU, m) {
  m.impl("merge_tokens_fwd", &merge_forward_op<kCpuKernels>);
  m.impl("merge_tokens_bwd", &merge_backward_op<kCpuKernels>);
  m.impl("unmerge_tokens_fwd", &unmerge_forward_op<kCpuKernels>);
  m.impl("unmerge_tokens_bwd", &unmerge_backward_op<kCpuKernels>);
}

}  // namespace hvision::merge_tokens
