// Hopfield retrieval:  ξ_s = softmax(β ξ_{s-1} Xᵀ) X  (s < n),  out = softmax(β ξ_{n-1} Xᵀ) V.
// Every step is one attention pass whose keys are the stored patterns X; the rows of ξ evolve
// independently, so one query row (or a tile of rows) can run all the steps on chip. The score
// and its gradient below are per (query row, stored pattern); the softmax itself is the online
// softmax of common/step_math.h.
//
// Compiled into both the CPU and the CUDA kernels.
#pragma once

#include <cstdint>

#include "common/step_math.h"

namespace hvision {

constexpr int64_t kHopfieldMaxDim = 256;
// Updates per call at most: the retrieval converges in a few; the bound keeps the saved states
// (n_steps - 1 rows per query) from an absurd allocation or an overflowing size.
constexpr int64_t kHopfieldMaxSteps = 1024;

// The score of a stored pattern: β ξ·x.
template <typename T>
HV_HOST_DEVICE T hopfield_score(T dot, T beta) {
  return beta * dot;
}

// dL/d(ξ·x) of one (row, pattern) pair: β p (dp - Σ_k p_k dp_k), where dp = dξ_s·v is the
// gradient reaching the probability and `row_dot` = dξ_s·ξ_s for the step's output row ξ_s.
template <typename T>
HV_HOST_DEVICE T hopfield_dot_grad(T probability, T d_probability, T row_dot, T beta) {
  return beta * softmax_score_grad(probability, d_probability, row_dot);
}

}  // namespace hvision
