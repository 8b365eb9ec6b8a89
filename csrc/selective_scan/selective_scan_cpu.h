// What the selective_scan CPU kernels share: a channel's inputs and its per-step factors, the
// per-thread scratch rows, the view of one call's tensors, how the backward pass splits into
// tasks, and the kernels' entry points. The CPU implementation is four files:
//   selective_scan_cpu.cpp          the entry: picks the kernels by state size, allocates the
//                                   gradient buffers and reduces them
//   selective_scan_cpu_states.cpp   per-state kernels (N > kMaxLaneStates): one channel at a time,
//                                   the N states of a step one vector loop
//   selective_scan_cpu_lanes.cpp    lane kernels (N <= kMaxLaneStates): kLanes channels at once,
//                                   one per vector lane
//   selective_scan_cpu_transpose.h  the lane kernels' transposes between channel rows and tiles
// Both kernels are compiled per instruction set (HV_CPU_DISPATCH). Inputs in fp16/bf16 are
// widened one row at a time; everything accumulates in float (double for float64 inputs).
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/cpu_dispatch.h"
#include "common/cpu_widen.h"
#include "selective_scan/selective_scan.h"
#include "selective_scan/selective_scan_step.h"

namespace hvision::selective_scan::cpu_kernels {

// B or C as one channel reads it: the N values of step t start at data + t * step (step = N for
// a variable projection stored (L, N), 0 for a fixed one).
template <typename T>
struct Projection {
  const T* data;
  int64_t step;
  const T* at(int64_t t) const { return data + t * step; }
};

// One channel (batch b, channel d) of the scan, in the accumulation type T.
template <typename T>
struct Channel {
  const T* u;          // (L,)
  const T* delta_raw;  // (L,), before bias and softplus
  const T* z;          // (L,) or nullptr
  const T* A;          // (N,)
  Projection<T> B, C;
  T skip_d, delta_bias;
  int64_t length, state;
  bool softplus, reverse;

  int64_t time(int64_t step) const { return reverse ? length - 1 - step : step; }
};

// Rows of per-time-step factors, computed for the whole channel in vector loops before the
// sequential scan so that its critical path holds no exp, log or division of its own.
template <typename T>
struct StepFactors {
  T* delta;       // δ_t
  T* delta_grad;  // dδ_t / d(delta_t + bias)            (backward)
  T* gate;        // silu(z_t)                           (with z)
  T* gate_grad;   // silu'(z_t)                          (backward with z)
};

template <bool kSoftplus, typename T>
HV_INLINE void discretize_row(const T* raw, T bias, int64_t length, T* delta, T* delta_grad) {
#pragma omp simd
  for (int64_t t = 0; t < length; ++t) delta[t] = scan_delta(raw[t] + bias, kSoftplus);
  if (delta_grad == nullptr) return;
#pragma omp simd
  for (int64_t t = 0; t < length; ++t) delta_grad[t] = scan_delta_grad(raw[t] + bias, kSoftplus);
}

template <typename T>
HV_INLINE void compute_step_factors(const Channel<T>& c, const StepFactors<T>& f) {
  const int64_t L = c.length;
  if (c.softplus) {
    discretize_row<true>(c.delta_raw, c.delta_bias, L, f.delta, f.delta_grad);
  } else {
    discretize_row<false>(c.delta_raw, c.delta_bias, L, f.delta, f.delta_grad);
  }
  if (c.z == nullptr) return;
  const T* z = c.z;
  T* gate = f.gate;
#pragma omp simd
  for (int64_t t = 0; t < L; ++t) gate[t] = scan_gate(z[t]).value;
  if (f.gate_grad == nullptr) return;
  T* gate_grad = f.gate_grad;
#pragma omp simd
  for (int64_t t = 0; t < L; ++t) gate_grad[t] = scan_gate(z[t]).derivative;
}

// Sum over the state axis. Products are staged in a row and summed by a fixed-width tree rather
// than with `omp simd reduction`, which GCC leaves scalar in the AVX2 variant.
template <typename T>
HV_INLINE T sum_row(const T* values, int64_t N) {
  constexpr int64_t kLanes = 16;
  T lanes[kLanes] = {};
  int64_t n = 0;
  for (; n + kLanes <= N; n += kLanes) {
#pragma omp simd
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += values[n + l];
  }
  for (int64_t l = 0; n + l < N; ++l) lanes[l] += values[n + l];
  for (int64_t width = kLanes / 2; width > 0; width /= 2) {
#pragma omp simd
    for (int64_t l = 0; l < width; ++l) lanes[l] += lanes[l + width];
  }
  return lanes[0];
}

// Scratch of the backward pass of one channel, in values.
inline int64_t backward_scratch_size(int64_t N) { return (2 * kScanChunk + 3) * N; }

// Per-thread scratch rows for the step factors of one channel at a time.
template <typename T>
struct FactorRows {
  std::vector<T> delta, delta_grad, gate, gate_grad;

  StepFactors<T> get(int64_t length, bool has_z, bool backward) {
    const auto row = [length](std::vector<T>& v, bool used) {
      if (!used) return static_cast<T*>(nullptr);
      v.resize(length);
      return v.data();
    };
    return {row(delta, true), row(delta_grad, backward), row(gate, has_z),
            row(gate_grad, has_z && backward)};
  }
};

// Where a kernel writes an output row: in place when the types agree, else in `buffer`, which
// narrow_row then stores.
template <typename T, typename scalar_t>
T* output_row(scalar_t* row, int64_t length, std::vector<T>& buffer) {
  if constexpr (std::is_same_v<T, scalar_t>) {
    return row;
  } else {
    buffer.resize(length);
    return buffer.data();
  }
}

template <typename T, typename scalar_t>
void narrow_row(const T* computed, scalar_t* row, int64_t length) {
  if constexpr (!std::is_same_v<T, scalar_t>) std::copy_n(computed, length, row);
}

// Channels per lane block: one AVX-512 vector of float, two AVX2 vectors.
constexpr int64_t kLanes = 16;
// The lane kernels take state sizes up to the 8 of the small presets: the per-state build's
// vectors would be at most half full on AVX-512.
constexpr int64_t kMaxLaneStates = 8;

inline bool uses_lanes(const ScanInputs& in) { return in.state <= kMaxLaneStates; }

// Read-only views of everything a channel needs, resolved to raw pointers once per call.
template <typename scalar_t, typename T>
struct ScanView {
  const ScanInputs& in;
  at::Tensor B_rows, C_rows;

  ScanView(const ScanInputs& inputs)
      : in(inputs),
        B_rows(projection_rows(inputs.B, inputs.B_variable(), inputs.acc_dtype())),
        C_rows(projection_rows(inputs.C, inputs.C_variable(), inputs.acc_dtype())) {}

  int64_t row_offset(int64_t b, int64_t d) const { return (b * in.dim + d) * in.length; }

  static Projection<T> projection(const at::Tensor& rows, int64_t groups, const ScanInputs& in,
                                  int64_t b, int64_t d) {
    const T* base = rows.data_ptr<T>();
    if (groups == 0) return {base + d * in.state, 0};
    const int64_t group = d / (in.dim / groups);
    return {base + (b * groups + group) * in.length * in.state, in.state};
  }

  static T value_or(const std::optional<at::Tensor>& t, int64_t d, T fallback) {
    return t ? t->data_ptr<T>()[d] : fallback;
  }

  // The widened u, delta and z rows of channel (b, d), in the three buffers.
  Channel<T> load_channel(int64_t b, int64_t d, std::vector<T> (&buffers)[3]) const {
    const int64_t offset = row_offset(b, d);
    const T* u = widen(in.u.data_ptr<scalar_t>() + offset, in.length, buffers[0]);
    const T* delta = widen(in.delta.data_ptr<scalar_t>() + offset, in.length, buffers[1]);
    const T* z = in.z ? widen(in.z->data_ptr<scalar_t>() + offset, in.length, buffers[2])
                      : nullptr;
    return Channel<T>{u,
                      delta,
                      z,
                      in.A.data_ptr<T>() + d * in.state,
                      projection(B_rows, in.groups_B, in, b, d),
                      projection(C_rows, in.groups_C, in, b, d),
                      value_or(in.D, d, T(0)),
                      value_or(in.delta_bias, d, T(0)),
                      in.length,
                      in.state,
                      in.softplus,
                      in.reverse};
  }
};

// Gradients of one backward call in the accumulation type, before the reductions over batch
// and channel blocks that make them the shapes of the inputs.
struct GradBuffers {
  at::Tensor du, ddelta, dz;    // like u (dz empty without z)
  at::Tensor dA;                // (batch, dim, N) per-batch partials
  at::Tensor dB, dC;            // fixed: (batch, dim, N) per-batch partials; variable:
                                // (batch, blocks, G, L, N) per-block partials
  at::Tensor dD, d_delta_bias;  // (batch, dim) per-batch partials
  at::Tensor d_initial_state;   // (batch, dim, N)
};

// A backward task is (batch, block of channels); it alone writes its rows of the dB/dC buffers.
// Its channels: a share of dim, in whole kLanes slots on the lane path.
inline std::pair<int64_t, int64_t> task_channels(const ScanInputs& in, int64_t blocks,
                                                 int64_t block) {
  const int64_t unit = uses_lanes(in) ? kLanes : 1;
  const int64_t units = (in.dim + unit - 1) / unit;
  const auto start = [&](int64_t i) { return std::min(in.dim, i * units / blocks * unit); };
  return {start(block), start(block + 1)};
}

// Where channel d of task (b, block) accumulates dB or dC: its (N,) row of a fixed projection's
// buffer, or its group's (L, N) rows of the task in a variable one's.
template <typename T>
T* projection_grad(const at::Tensor& buffer, int64_t groups, const ScanInputs& in,
                   int64_t blocks, int64_t b, int64_t block, int64_t d) {
  if (groups == 0) return buffer.data_ptr<T>() + (b * in.dim + d) * in.state;
  const int64_t group = d / (in.dim / groups);
  return buffer.data_ptr<T>() + ((b * blocks + block) * groups + group) * in.length * in.state;
}

// The kernels of each path, for every input dtype: the forward pass writes out, last_state and
// checkpoints (allocated by the caller); the backward pass fills g, split into `blocks` channel
// blocks per batch.
void forward_states_cpu(const ScanInputs& in, at::Tensor& out, at::Tensor& last_state,
                        at::Tensor& checkpoints);
void backward_states_cpu(const ScanInputs& in, const at::Tensor& dout,
                         const std::optional<at::Tensor>& dlast_state,
                         const at::Tensor& checkpoints, GradBuffers& g, int64_t blocks);
void forward_lanes_cpu(const ScanInputs& in, at::Tensor& out, at::Tensor& last_state,
                       at::Tensor& checkpoints);
void backward_lanes_cpu(const ScanInputs& in, const at::Tensor& dout,
                        const std::optional<at::Tensor>& dlast_state,
                        const at::Tensor& checkpoints, GradBuffers& g, int64_t blocks);

}  // namespace hvision::selective_scan::cpu_kernels
