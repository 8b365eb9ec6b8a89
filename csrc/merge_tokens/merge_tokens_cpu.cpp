// merge_tokens CPU kernels.
//
// best_matches: tasks are (batch, tile of A rows). A thread normalises the B rows of a batch once
// (into its own buffer) and the A rows of each task; the similarities of the task's A rows
// against a tile of B rows are then one tile GEMM (common/cpu_gemm.h) into a per-thread tile,
// folded at once into each A row's running best match, so the Na x Nb similarity matrix never
// exists.
// Each task walks the B tiles in order, so the result does not depend on the thread count.
// segment_sum and gather_rows walk output rows in parallel, each row's sources in token order.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/cpu_dispatch.h"
#include "common/cpu_gemm.h"
#include "merge_tokens/merge_tokens.h"
#include "merge_tokens/merge_tokens_step.h"

namespace hvision::merge_tokens {
namespace {

constexpr int64_t kRowTile = 64;   // A tokens per task
constexpr int64_t kColTile = 512;  // B tokens per BLAS call

// tile[i][j] = a_i · b_j for `rows` A rows and `cols` B rows of length k, all `k` apart (tile
// row-major, `cols` wide).
template <typename T>
void tile_dot_products(const T* a, const T* b, int64_t rows, int64_t cols, int64_t k, T* tile) {
  cpu::gemm({.b = true}, rows, cols, k, T(1), a, k, b, k, T(0), tile, cols);
}

// `count` metric rows `stride` rows apart, as unit rows in the accumulation type.
template <typename scalar_t, typename T>
HV_INLINE void normalise_rows(const scalar_t* rows, int64_t count, int64_t stride, int64_t k,
                              T* units) {
  for (int64_t i = 0; i < count; ++i) {
    const scalar_t* row = rows + i * stride * k;
    T* unit = units + i * k;
    T sum_of_squares = 0;
#pragma omp simd reduction(+ : sum_of_squares)
    for (int64_t c = 0; c < k; ++c) {
      unit[c] = T(row[c]);
      sum_of_squares += unit[c] * unit[c];
    }
    const T divisor = norm_divisor(sum_of_squares);
#pragma omp simd
    for (int64_t c = 0; c < k; ++c) unit[c] /= divisor;
  }
}

// Folds one row of similarities (B tokens first .. first + cols) into the A token's best match.
// A later tile only wins with a strictly higher value, so equal values keep the lower index.
template <typename T>
HV_INLINE void fold_row(T* row, int64_t first, int64_t cols, Match<T>& best) {
  T tile_max = math::negative_infinity<T>();
#pragma omp simd reduction(max : tile_max)
  for (int64_t j = 0; j < cols; ++j) {
    row[j] = cosine_similarity(row[j]);
    tile_max = row[j] > tile_max ? row[j] : tile_max;
  }
  if (!(tile_max > best.value)) return;
  int64_t j = 0;
  while (row[j] != tile_max) ++j;
  best = {tile_max, first + j};
}

template <typename T>
HV_INLINE void fold_tile(T* tile, int64_t rows, int64_t first, int64_t cols, Match<T>* best) {
  for (int64_t i = 0; i < rows; ++i) fold_row(tile + i * cols, first, cols, best[i]);
}

HV_CPU_DISPATCH(run_fold_tile, fold_tile)
HV_CPU_DISPATCH(run_normalise_rows, normalise_rows)

// One thread's buffers: the unit B rows of the batch it is in (normalised once per batch it
// visits), the unit A rows of its task, and a tile of dot products. ATen's allocator aligns them
// to 64 bytes, so BLAS takes the same path in every run.
template <typename T>
struct MatchScratch {
  at::Tensor b_units, a_units, tile;
  int64_t batch = -1;

  MatchScratch(int64_t b_count, int64_t k, const at::TensorOptions& options)
      : b_units(at::empty({b_count * k}, options)),
        a_units(at::empty({kRowTile * k}, options)),
        tile(at::empty({kRowTile * kColTile}, options)) {}
};

template <typename scalar_t>
void best_matches_kernel(const at::Tensor& metric, const std::optional<at::Tensor>& importance,
                         int64_t protect, double importance_weight, at::Tensor& score,
                         at::Tensor& best) {
  using T = at::opmath_type<scalar_t>;
  const int64_t tokens = metric.size(1), k = metric.size(2);
  const int64_t a_count = score.size(1), b_count = (tokens - protect) / 2;
  const int64_t row_tiles = (a_count + kRowTile - 1) / kRowTile;
  const scalar_t* metric_data = metric.const_data_ptr<scalar_t>();
  const T* importance_data = importance ? importance->const_data_ptr<T>() : nullptr;
  T* score_data = score.mutable_data_ptr<T>();
  int64_t* best_data = best.mutable_data_ptr<int64_t>();
  at::parallel_for(0, metric.size(0) * row_tiles, 1, [&](int64_t begin, int64_t end) {
    MatchScratch<T> s(b_count, k, score.options());
    T* b_units = s.b_units.template mutable_data_ptr<T>();
    T* a_units = s.a_units.template mutable_data_ptr<T>();
    T* tile = s.tile.template mutable_data_ptr<T>();
    Match<T> matches[kRowTile];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / row_tiles, first_a = task % row_tiles * kRowTile;
      const int64_t rows = std::min(kRowTile, a_count - first_a);
      const scalar_t* batch_metric = metric_data + b * tokens * k;
      if (s.batch != b) {  // B tokens are the odd unprotected ones, 2 rows apart
        run_normalise_rows(batch_metric + (protect + 1) * k, b_count, 2, k, b_units);
        s.batch = b;
      }
      const int64_t a_token = protect + 2 * first_a;
      run_normalise_rows(batch_metric + a_token * k, rows, 2, k, a_units);
      std::fill_n(matches, rows, Match<T>{math::negative_infinity<T>(), 0});
      for (int64_t first_b = 0; first_b < b_count; first_b += kColTile) {
        const int64_t cols = std::min(kColTile, b_count - first_b);
        tile_dot_products(a_units, b_units + first_b * k, rows, cols, k, tile);
        run_fold_tile(tile, rows, first_b, cols, matches);
      }
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t token = b * tokens + a_token + 2 * i;
        const int64_t out = b * a_count + first_a + i;
        score_data[out] = merge_score(matches[i].value,
                                      importance_data ? importance_data[token] : T(0),
                                      static_cast<T>(importance_weight));
        best_data[out] = matches[i].index;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> best_matches_cpu(const at::Tensor& metric,
                                                    const std::optional<at::Tensor>& importance,
                                                    int64_t protect, double importance_weight) {
  const auto acc_options = metric.options().dtype(at::toOpMathType(metric.scalar_type()));
  const int64_t a_count = (metric.size(1) - protect + 1) / 2;
  at::Tensor score = at::empty({metric.size(0), a_count}, acc_options);
  at::Tensor best = at::empty({metric.size(0), a_count}, acc_options.dtype(at::kLong));
  if (score.numel() == 0) return {score, best};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, metric.scalar_type(),
                                  "merge_tokens_best_matches_cpu", [&] {
                                    best_matches_kernel<scalar_t>(metric, importance, protect,
                                                                  importance_weight, score, best);
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
  const int64_t* sorted_rows = rows.sorted_rows.const_data_ptr<int64_t>();
  const int64_t* sources = rows.sources.const_data_ptr<int64_t>();
  scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
  T* total_data = totals.mutable_data_ptr<T>();
  at::parallel_for(0, values.size(0) * count, 16, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(channels);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / count;
      const int64_t* batch_rows = sorted_rows + b * tokens;
      const int64_t first = sources_begin(batch_rows, tokens, row % count);
      const int64_t last = sources_begin(batch_rows, tokens, row % count + 1);
      std::fill(acc.begin(), acc.end(), T(0));
      T total = 0;
      for (int64_t k = first; k < last; ++k) {
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
