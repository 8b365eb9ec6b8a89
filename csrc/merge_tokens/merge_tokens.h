// merge_tokens / unmerge_tokens: validation, the device-independent bookkeeping of the matching,
// and the per-device kernels it is built from. The schemas are in csrc/hvision.cpp; the math of
// a step is in merge_tokens_step.h.
//
// Three kernels per device serve the four operators. A merge runs best_matches (fused
// normalise + A x B cosine similarity + each A token's best B, never storing the similarity
// matrix), then, once the r merged tokens are chosen and `assign` is built from tensor ops,
// segment_sum (the size-weighted average of each output row's sources, in token order). Its
// backward and unmerge's forward are gather_rows; unmerge's backward is segment_sum again (a
// plain sum).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace hvision::merge_tokens {

// The sources of every output row, in token order: assign sorted by row (stable, so a row's
// tokens stay in token order) and the tokens in that order. Row j of batch b reads the tokens
// sources[b, k] for the k where sorted_rows[b, k] == j (found by sources_begin, merge_tokens_step.h).
struct RowSources {
  at::Tensor sorted_rows;  // (batch, N) int64
  at::Tensor sources;      // (batch, N) int64
  int64_t rows = 0;
};

struct Kernels {
  // For every A token (the even unprotected tokens), its best B: (score, best) where score is
  // merge_score(best cosine similarity, importance, weight) in the accumulation type and best
  // the index among the B tokens, both (batch, Na). importance is in the accumulation type.
  std::tuple<at::Tensor, at::Tensor> (*best_matches)(const at::Tensor& metric,
                                                     const std::optional<at::Tensor>& importance,
                                                     int64_t protect, double importance_weight);
  // out[b, j] = Σ weights[s] values[s] over the row's sources s, divided by Σ weights[s] when
  // `average`; weights are ones when absent. Returns (out in values' dtype, Σ weights in the
  // accumulation type). weights are in the accumulation type.
  std::tuple<at::Tensor, at::Tensor> (*segment_sum)(const at::Tensor& values,
                                                    const std::optional<at::Tensor>& weights,
                                                    const RowSources& rows, bool average);
  // out[b, i] = values[b, assign[b, i]] (· scale[b, i] when given, in the accumulation type).
  at::Tensor (*gather_rows)(const at::Tensor& values, const at::Tensor& assign,
                            const std::optional<at::Tensor>& scale);
};

using MergeResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

MergeResult merge_forward(const Kernels& kernels, const at::Tensor& x, const at::Tensor& metric,
                          int64_t r, const std::optional<at::Tensor>& importance,
                          const std::optional<at::Tensor>& size, int64_t protect,
                          double importance_weight);
at::Tensor merge_backward(const Kernels& kernels, const at::Tensor& dmerged,
                          const at::Tensor& assign, const std::optional<at::Tensor>& size,
                          const at::Tensor& merged_size);
at::Tensor unmerge_forward(const Kernels& kernels, const at::Tensor& y, const at::Tensor& assign);
at::Tensor unmerge_backward(const Kernels& kernels, const at::Tensor& dout,
                            const at::Tensor& assign, int64_t rows);

// The schema-shaped operator functions, instantiated once per device with its kernels.
template <const Kernels& kDevice>
MergeResult merge_forward_op(const at::Tensor& x, const at::Tensor& metric, int64_t r,
                             const std::optional<at::Tensor>& importance,
                             const std::optional<at::Tensor>& size, int64_t protect,
                             double importance_weight) {
  return merge_forward(kDevice, x, metric, r, importance, size, protect, importance_weight);
}
template <const Kernels& kDevice>
at::Tensor merge_backward_op(const at::Tensor& dmerged, const at::Tensor& assign,
                             const std::optional<at::Tensor>& size,
                             const at::Tensor& merged_size) {
  return merge_backward(kDevice, dmerged, assign, size, merged_size);
}
template <const Kernels& kDevice>
at::Tensor unmerge_forward_op(const at::Tensor& y, const at::Tensor& assign) {
  return unmerge_forward(kDevice, y, assign);
}
template <const Kernels& kDevice>
at::Tensor unmerge_backward_op(const at::Tensor& dout, const at::Tensor& assign, int64_t rows) {
  return unmerge_backward(kDevice, dout, assign, rows);
}

}  // namespace hvision::merge_tokens
