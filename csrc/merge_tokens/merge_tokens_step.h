// Token merging (ToMe bipartite soft matching): unit metric rows and their cosine similarities,
// the (value, index) order of matches in which ties go to the lower index, the merge score of an
// A token, the source range of an output row, and the size-weighted average of its sources.
//
// Compiled into both the CPU and the CUDA kernels, on the elementary functions of
// common/step_math.h.
#pragma once

#include <cstdint>

#include "common/step_math.h"

namespace hvision {

// What a metric row is divided by to make it a unit vector: max(||m||, 1e-12), as
// torch.nn.functional.normalize does (a zero metric has zero similarity to everything). Rows are
// normalised before the dot products, so that equal or proportional rows give bitwise equal
// similarities and their ties resolve by index.
template <typename T>
HV_HOST_DEVICE T norm_divisor(T sum_of_squares) {
  const T norm = math::sqrt(sum_of_squares);
  return norm > T(1e-12) ? norm : T(1e-12);
}

// A NaN ranks below every number (as -inf), so that matching and selection are total orders.
template <typename T>
HV_HOST_DEVICE T nan_as_lowest(T value) {
  return value == value ? value : math::negative_infinity<T>();
}

// The cosine similarity from the dot product of two unit rows, as the matching ranks it.
template <typename T>
HV_HOST_DEVICE T cosine_similarity(T unit_dot) {
  return nan_as_lowest(unit_dot);
}

// An A token's best B (its cosine similarity and index among the B tokens).
template <typename T>
struct Match {
  T value;
  int64_t index;
};

// Whether `a` is the better match: the higher value, and of equal values the lower index.
template <typename T>
HV_HOST_DEVICE bool better_match(const Match<T>& a, const Match<T>& b) {
  return a.value > b.value || (a.value == b.value && a.index < b.index);
}

// What the r merged A tokens are chosen by: their best similarity less their importance.
template <typename T>
HV_HOST_DEVICE T merge_score(T best_similarity, T importance, T importance_weight) {
  return nan_as_lowest(best_similarity - importance_weight * importance);
}

// Where the sources of output row `row` start in a batch's assign sorted by row: the first of
// the `count` sorted entries that is >= row (binary search). Row j's sources are
// [sources_begin(j), sources_begin(j + 1)).
HV_HOST_DEVICE int64_t sources_begin(const int64_t* sorted_rows, int64_t count, int64_t row) {
  int64_t low = 0, high = count;
  while (low < high) {
    const int64_t mid = low + (high - low) / 2;
    if (sorted_rows[mid] < row) {
      low = mid + 1;
    } else {
      high = mid;
    }
  }
  return low;
}

// The size-weighted average of the tokens merged into one row: sum size·x over the sources in
// token order, then divide by the summed size.
template <typename T>
HV_HOST_DEVICE T merge_accumulate(T sum, T size, T x) {
  return sum + size * x;
}

template <typename T>
HV_HOST_DEVICE T merge_average(T weighted_sum, T total_size) {
  return weighted_sum / total_size;
}

}  // namespace hvision
