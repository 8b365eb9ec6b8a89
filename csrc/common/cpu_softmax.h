// The online-softmax step of step_math.h applied to a whole row of scores with vector loops, for
// the flash-style CPU kernels (inlined into their per-ISA variants).
#pragma once

#include <cstdint>

#include "common/cpu_dispatch.h"
#include "common/step_math.h"

namespace hvision::cpu {

// Folds `count` scores (scale · the raw values in `scores`) into a row's online softmax: the
// scores become their unnormalised weights exp(s - m) against the running maximum m, which is
// raised first. Returns the factor the row's accumulator must be rescaled by.
template <typename T>
HV_INLINE T online_softmax_absorb(OnlineSoftmax<T>& row, T* scores, int64_t count, T scale) {
  T tile_max = math::negative_infinity<T>();
#pragma omp simd reduction(max : tile_max)
  for (int64_t j = 0; j < count; ++j) {
    scores[j] *= scale;
    tile_max = scores[j] > tile_max ? scores[j] : tile_max;
  }
  const T factor = online_softmax_advance(row, tile_max);
  const T shift = online_softmax_shift(row);
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < count; ++j) {
    scores[j] = online_softmax_weight(scores[j], shift);
    sum += scores[j];
  }
  row.sum += sum;
  return factor;
}

}  // namespace hvision::cpu
