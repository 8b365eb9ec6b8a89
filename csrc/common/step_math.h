// The step math shared by more than one operator, compiled into both the CPU and the CUDA kernels
// so that the CPU tests also check the math the GPU runs: HV_HOST_DEVICE, the CPU's GCC vector
// types, the elementary functions (exp, log1p, softplus, sigmoid...) and the online softmax of
// the attention-like operators. Each operator's own step (its recurrences, scores, gradients and
// constants) is in csrc/<op>/<op>_step.h, which includes this header. Everything here is scalar
// and branch-light: the CPU kernels call it inside `omp simd` loops, the CUDA kernels per thread.
// `T` is the accumulation type: float for fp32/fp16/bf16 inputs, double for float64.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#if defined(__CUDACC__)
#define HV_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define HV_HOST_DEVICE inline __attribute__((always_inline))
#endif

namespace hvision {

#if !defined(__CUDA_ARCH__)
// GCC vectors, for the CPU kernels that hold values in registers: Vector<T, kBytes> is kBytes of
// T (declared in a class: on an alias template GCC drops the attribute), VectorValue<V> that T
// and kVectorWidth<V> how many.
template <typename T, int64_t kBytes>
struct VectorOf {
  using type [[gnu::vector_size(kBytes)]] = T;
};
template <typename T, int64_t kBytes>
using Vector = typename VectorOf<T, kBytes>::type;

template <typename V>
using VectorValue = std::decay_t<decltype(V{}[0])>;

template <typename V>
constexpr int64_t kVectorWidth = sizeof(V) / sizeof(VectorValue<V>);
#endif

// ---------------------------------------------------------------------------------------------
// Elementary functions
// ---------------------------------------------------------------------------------------------
namespace math {

#if !defined(__CUDA_ARCH__)
// 2^k for a whole number k in [-127, 128] held in a float (or each lane of a vector of floats),
// assembled in the exponent bits.
template <typename Float>
inline __attribute__((always_inline)) Float pow2_whole(Float k) {
  if constexpr (std::is_same_v<Float, float>) {
    return __builtin_bit_cast(float, (static_cast<int32_t>(k) + 127) << 23);
  } else {
    using Bits = Vector<int32_t, sizeof(Float)>;
    return __builtin_bit_cast(Float, (__builtin_convertvector(k, Bits) + 127) << 23);
  }
}

// exp(x) for float, or each lane of a GCC vector of floats one register wide (GCC lowers the
// compares of a wider one lane by lane), on the CPU: Cody-Waite reduction to r in
// [-ln2/2, ln2/2], a degree-6 polynomial, and 2^k. Unlike std::exp it has no call and no branch,
// so GCC vectorises loops that use it (max error ~2 ulp on normal results). Clamping x to
// [-88, 89] makes 2^k exactly 0 (k = -127) below the normal range and +inf (k = 128) above it,
// so underflow and overflow need no select of their own.
template <typename Float>
inline __attribute__((always_inline)) Float exp_host(Float x) {
  const Float low = Float{} - 88.0f, high = Float{} + 89.0f;
  Float clamped = x < low ? low : x;
  clamped = clamped > high ? high : clamped;
  // Round to nearest by adding and subtracting 1.5 * 2^23: plain arithmetic, so it vectorises
  // on every instruction set.
  constexpr float kRoundingShift = 12582912.0f;
  const Float k = (clamped * 1.44269504088896341f + kRoundingShift) - kRoundingShift;
  const Float r = (clamped - k * 0.693145751953125f) - k * 1.428606765330187045e-06f;
  Float p = Float{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3333519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * pow2_whole(k);
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

#if !defined(__CUDA_ARCH__)
// exp of each lane of a GCC vector (the CPU kernels' channel lanes): exp_host for float lanes,
// std::exp lane by lane for double.
template <typename V, typename = std::enable_if_t<!std::is_arithmetic_v<V>>>
inline __attribute__((always_inline)) V exp(V x) {
  if constexpr (std::is_same_v<VectorValue<V>, float>) {
    return exp_host(x);
  } else {
    for (int64_t i = 0; i < kVectorWidth<V>; ++i) x[i] = ::exp(x[i]);
    return x;
  }
}
#endif

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

HV_HOST_DEVICE float sqrt(float x) { return ::sqrtf(x); }
HV_HOST_DEVICE double sqrt(double x) { return ::sqrt(x); }

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

}  // namespace hvision
