// Selective scan (Mamba SSM):  h_t = exp(δ_t A) h_{t-1} + δ_t B_t u_t,  y_t = C_t · h_t,
// out_t = (y_t + D u_t) · silu(z_t).  One call of each function below covers one time step of
// one channel (the per-time-step parts) or one (channel, state) element (the per-state parts).
//
// Compiled into both the CPU and the CUDA kernels, on the elementary functions of
// common/step_math.h.
#pragma once

#include <cstdint>

#include "common/step_math.h"

namespace hvision {

// The forward pass saves the state entering every chunk of this many steps; the backward pass
// recomputes the states of one chunk at a time from it instead of storing all L x N states.
constexpr int64_t kScanChunk = 64;
constexpr int64_t kScanMaxState = 256;

HV_HOST_DEVICE int64_t scan_num_chunks(int64_t length) {
  return (length + kScanChunk - 1) / kScanChunk;
}

// δ from the raw delta input: δ = delta + bias, then softplus if asked.
template <typename T>
HV_HOST_DEVICE T scan_delta(T raw_plus_bias, bool softplus) {
  return softplus ? math::softplus(raw_plus_bias) : raw_plus_bias;
}

// dδ / d(delta + bias).
template <typename T>
HV_HOST_DEVICE T scan_delta_grad(T raw_plus_bias, bool softplus) {
  return softplus ? math::sigmoid(raw_plus_bias) : T(1);
}

// Per state element: decay = exp(δ a) and h <- decay h + b (δ u).
template <typename T>
HV_HOST_DEVICE T scan_decay(T delta, T a) {
  return math::exp(delta * a);
}

template <typename T>
HV_HOST_DEVICE T scan_state_update(T h, T decay, T b, T delta_u) {
  return decay * h + b * delta_u;
}

// The gate of the output, silu(z) = z sigmoid(z), and its derivative; {1, 0} without z.
template <typename T>
struct Gate {
  T value, derivative;
};

template <typename T>
HV_HOST_DEVICE Gate<T> scan_gate(T z) {
  const T sig = math::sigmoid(z);
  return {z * sig, sig * (T(1) + z * (T(1) - sig))};
}

// Per time step: out = (y + D u) gate, from y = C·h.
template <typename T>
HV_HOST_DEVICE T scan_output(T y, T u, T skip_d, T gate) {
  return (y + skip_d * u) * gate;
}

// Per time step, backward of scan_output: the gradients reaching y and z. The backward pass
// recomputes y only when there is a gate (otherwise dz is unused).
template <typename T>
HV_HOST_DEVICE void scan_output_backward(T dout, T y, T u, T skip_d, Gate<T> gate, T& dy, T& dz) {
  dy = dout * gate.value;
  dz = dout * (y + skip_d * u) * gate.derivative;
}

// Per state element, backward of one step. On entry `adjoint` is dL/dh_t (the carry from step
// t+1 plus dy_t C_t); on exit it is dL/dh_{t-1}. Accumulates the step's contributions to dδ, du
// (both summed over the states by the caller) and to dA; returns the gradient of this step's b.
template <typename T>
HV_HOST_DEVICE T scan_state_backward(T& adjoint, T h_prev, T decay, T delta, T a, T b, T u,
                                     T& d_delta, T& d_u, T& d_a) {
  const T adjoint_delta = adjoint * delta;
  const T decayed_prev = decay * h_prev;
  d_delta += adjoint * (a * decayed_prev + b * u);
  d_u += adjoint_delta * b;
  d_a += adjoint_delta * decayed_prev;
  const T d_b = adjoint_delta * u;
  adjoint *= decay;
  return d_b;
}

}  // namespace hvision
