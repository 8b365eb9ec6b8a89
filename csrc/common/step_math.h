// The arithmetic of one step of each operator, written once and compiled into both the CPU and
// the CUDA kernels, so that the CPU tests also check the math the GPU runs. Everything here is
// scalar and branch-light: the CPU kernels call it inside `omp simd` loops, the CUDA kernels per
// thread. `T` is the accumulation type: float for fp32/fp16/bf16 inputs, double for float64.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__CUDACC__)
#define HV_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define HV_HOST_DEVICE inline __attribute__((always_inline))
#endif

namespace hvision {

// ---------------------------------------------------------------------------------------------
// Elementary functions
// ---------------------------------------------------------------------------------------------
namespace math {

#if !defined(__CUDA_ARCH__)
// exp(x) for float on the CPU: Cody-Waite reduction to r in [-ln2/2, ln2/2], a degree-6
// polynomial, and the power of two assembled in the exponent bits. Unlike std::exp it has no
// call and no branch, so GCC vectorises loops that use it (max error ~2 ulp on normal results).
// Clamping x to [-88, 89] makes 2^k exactly 0 (k = -127) below the normal range and +inf
// (k = 128) above it, so underflow and overflow need no select of their own.
inline __attribute__((always_inline)) float exp_host(float x) {
  float clamped = x < -88.0f ? -88.0f : x;
  clamped = clamped > 89.0f ? 89.0f : clamped;
  // Round to nearest by adding and subtracting 1.5 * 2^23: plain arithmetic, so it vectorises
  // on every instruction set.
  constexpr float kRoundingShift = 12582912.0f;
  const float k = (clamped * 1.44269504088896341f + kRoundingShift) - kRoundingShift;
  const float r = (clamped - k * 0.693145751953125f) - k * 1.428606765330187045e-06f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3333519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}
#endif

#if !defined(__CUDA_ARCH__)
// log1p(y) for y in [0, 1] on the CPU: with s = y / (2 + y) in [0, 1/3], log1p(y) = 2 atanh(s),
// whose odd series converges to float precision by s^13. Vectorises like exp_host.
inline __attribute__((always_inline)) float log1p_unit_host(float y) {
  const float s = y / (2.0f + y);
  const float s2 = s * s;
  float p = 1.0f / 13.0f;
  p = p * s2 + 1.0f / 11.0f;
  p = p * s2 + 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  return 2.0f * s * (p * s2 + 1.0f);
}
#endif

HV_HOST_DEVICE float exp(float x) {
#if defined(__CUDA_ARCH__)
  return ::expf(x);
#else
  return exp_host(x);
#endif
}
HV_HOST_DEVICE double exp(double x) { return ::exp(x); }

// log1p(y) for y in [0, 1].
HV_HOST_DEVICE float log1p_unit(float y) {
#if defined(__CUDA_ARCH__)
  return ::log1pf(y);
#else
  return log1p_unit_host(y);
#endif
}
HV_HOST_DEVICE double log1p_unit(double y) { return ::log1p(y); }

HV_HOST_DEVICE float log(float x) { return ::logf(x); }
HV_HOST_DEVICE double log(double x) { return ::log(x); }

template <typename T>
HV_HOST_DEVICE constexpr T negative_infinity() {
  return -std::numeric_limits<T>::infinity();
}

template <typename T>
HV_HOST_DEVICE T sigmoid(T x) {
  return T(1) / (T(1) + exp(-x));
}

// softplus(x) = log(1 + e^x), in the overflow-free form max(x, 0) + log1p(e^-|x|) (equal to
// torch's softplus, which returns x itself above 20, to float precision).
template <typename T>
HV_HOST_DEVICE T softplus(T x) {
  const T positive = x > T(0) ? x : T(0);
  const T magnitude = x < T(0) ? -x : x;
  return positive + log1p_unit(exp(-magnitude));
}

}  // namespace math

// ---------------------------------------------------------------------------------------------
// Selective scan (Mamba SSM):  h_t = exp(δ_t A) h_{t-1} + δ_t B_t u_t,  y_t = C_t · h_t,
// out_t = (y_t + D u_t) · silu(z_t).  One call of each function below covers one time step of
// one channel (the per-time-step parts) or one (channel, state) element (the per-state parts).
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Online softmax (flash attention, the Hopfield update): the scores s_j of one query row arrive
// a tile of keys at a time. The row keeps the running maximum m and the running sum
// l = Σ exp(s_j - m) of the scores seen; accumulators Σ exp(s_j - m) v_j are rescaled whenever m
// grows. A masked score is -inf and weighs exactly 0; a row whose scores so far are all masked
// has m = -inf, l = 0 and zero accumulators, and rescaling them never forms -inf - -inf.
// ---------------------------------------------------------------------------------------------
template <typename T>
struct OnlineSoftmax {
  T max = math::negative_infinity<T>();
  T sum = T(0);
};

// Raises the running maximum to cover a tile whose largest score is `tile_max`, rescales the
// running sum, and returns the factor the row's accumulators must be multiplied by.
template <typename T>
HV_HOST_DEVICE T online_softmax_advance(OnlineSoftmax<T>& row, T tile_max) {
  const T new_max = row.max > tile_max ? row.max : tile_max;
  const T factor = row.max == math::negative_infinity<T>() ? T(0) : math::exp(row.max - new_max);
  row.sum *= factor;
  row.max = new_max;
  return factor;
}

// What the scores of the current tile are shifted by before exp: the running maximum, or 0 while
// it is -inf (every score seen masked), so that exp(score - shift) is 0 and never NaN.
template <typename T>
HV_HOST_DEVICE T online_softmax_shift(const OnlineSoftmax<T>& row) {
  return row.max == math::negative_infinity<T>() ? T(0) : row.max;
}

// exp(score - shift): a score's unnormalised weight in the current tile (the caller adds it to
// row.sum and weighs the values with it).
template <typename T>
HV_HOST_DEVICE T online_softmax_weight(T score, T shift) {
  return math::exp(score - shift);
}

// 1 / l, what the accumulators are multiplied by at the end (0 for a row with no allowed key).
template <typename T>
HV_HOST_DEVICE T online_softmax_normaliser(const OnlineSoftmax<T>& row) {
  return row.sum > T(0) ? T(1) / row.sum : T(0);
}

// log Σ_j exp(s_j), saved by the forward pass so the backward pass can recompute every
// probability as exp(s - lse) without a second pass over the keys; -inf for a fully masked row.
template <typename T>
HV_HOST_DEVICE T online_softmax_lse(const OnlineSoftmax<T>& row) {
  return row.sum > T(0) ? row.max + math::log(row.sum) : math::negative_infinity<T>();
}

// The probability of a score, recomputed from the saved log-sum-exp (0 for a fully masked row).
template <typename T>
HV_HOST_DEVICE T softmax_probability(T score, T lse) {
  return lse == math::negative_infinity<T>() ? T(0) : math::exp(score - lse);
}

// Backward of softmax for one score: ds = p (dp - Σ_k p_k dp_k), where the row's Σ_k p_k dp_k
// equals dout · out (the output row and its gradient), computed once per row.
template <typename T>
HV_HOST_DEVICE T softmax_score_grad(T probability, T d_probability, T row_dot) {
  return probability * (d_probability - row_dot);
}

// ---------------------------------------------------------------------------------------------
// Hopfield retrieval:  ξ_s = softmax(β ξ_{s-1} Xᵀ) X  (s < n),  out = softmax(β ξ_{n-1} Xᵀ) V.
// Every step is one attention pass whose keys are the stored patterns X; the rows of ξ evolve
// independently, so one query row (or a tile of rows) can run all the steps on chip. The score
// and its gradient below are per (query row, stored pattern); the softmax itself is the online
// softmax above.
// ---------------------------------------------------------------------------------------------
constexpr int64_t kHopfieldMaxDim = 256;

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
