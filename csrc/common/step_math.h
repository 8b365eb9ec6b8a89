// The arithmetic of one step of each operator, written once and compiled into both the CPU and
// the CUDA kernels, so that the CPU tests also check the math the GPU runs. Everything here is
// scalar and branch-light: the CPU kernels call it inside `omp simd` loops, the CUDA kernels per
// thread. `T` is the accumulation type: float for fp32/fp16/bf16 inputs, double for float64.
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
// Sparse attention: query i may attend key j iff (not causal or j <= i) and any of the local band
// |i - j| <= window, the strided term (i - j) % stride == 0, or the global term i < G or j < G.
// The kernels walk it from either side: "major" indices own the rows being computed (queries in
// the forward pass and for dq, keys for dk/dv) and "minor" indices are what they are paired with;
// `transposed` marks the key-major walk, where the causal condition reads minor >= major.
//
// A tile of major indices [a0, a1) reaches three disjoint sets of minor indices, so that a pair
// allowed by several terms is counted exactly once:
//   the global segment [0, G), the block segment [c0, c1) around the tile (the band and its
//   strided keys; the diagonal alone when only a stride is set), and each major index's own
//   strided extras b ≡ a (mod stride) outside both segments.
// The first `dense_majors` indices (the global rows, or every row of a dense pattern) instead
// reach every minor index the causal condition allows, as one segment.
// ---------------------------------------------------------------------------------------------
struct SparsePattern {
  int64_t length;
  int64_t window;      // < 0: no band
  int64_t stride;      // 0: no strided term
  int64_t num_global;  // may exceed length
  bool causal;
  bool transposed;

  HV_HOST_DEVICE bool has_window() const { return window >= 0; }
  HV_HOST_DEVICE bool has_stride() const { return stride > 0; }
  HV_HOST_DEVICE int64_t global_count() const { return num_global < length ? num_global : length; }
  // Every pair is allowed but for the causal condition: no term, or a stride of 1.
  HV_HOST_DEVICE bool is_dense() const {
    return stride == 1 || (!has_window() && !has_stride() && num_global == 0);
  }
  HV_HOST_DEVICE int64_t dense_majors() const { return is_dense() ? length : global_count(); }
};

// [begin, end) of minor indices; empty when end <= begin.
struct MinorRange {
  int64_t begin, end;
  HV_HOST_DEVICE int64_t size() const { return end > begin ? end - begin : 0; }
};

HV_HOST_DEVICE int64_t sparse_min(int64_t x, int64_t y) { return x < y ? x : y; }
HV_HOST_DEVICE int64_t sparse_max(int64_t x, int64_t y) { return x > y ? x : y; }

// Whether the causal condition lets major index a meet minor index b.
HV_HOST_DEVICE bool sparse_causal_ok(const SparsePattern& p, int64_t a, int64_t b) {
  return !p.causal || (p.transposed ? b >= a : b <= a);
}

// The minor indices the causal condition leaves to any major index of [a0, a1).
HV_HOST_DEVICE MinorRange sparse_causal_range(const SparsePattern& p, int64_t a0, int64_t a1) {
  if (!p.causal) return {0, p.length};
  return p.transposed ? MinorRange{a0, p.length} : MinorRange{0, a1};
}

HV_HOST_DEVICE MinorRange sparse_intersect(MinorRange x, MinorRange y) {
  return {sparse_max(x.begin, y.begin), sparse_min(x.end, y.end)};
}

// Whether major index a may meet minor index b (the definition above, with a, b swapped back
// to (query, key) when transposed: every term but the causal one is symmetric).
HV_HOST_DEVICE bool sparse_allows(const SparsePattern& p, int64_t a, int64_t b) {
  if (!sparse_causal_ok(p, a, b)) return false;
  if (p.is_dense() || a < p.num_global || b < p.num_global) return true;
  const int64_t distance = a > b ? a - b : b - a;
  if (p.has_window() && distance <= p.window) return true;
  return p.has_stride() && distance % p.stride == 0;
}

// A run of minor indices major index a certainly reaches (its causal range for a dense major
// index, else its causally clipped band, empty without a window): masking a tile checks
// sparse_allows only outside it.
HV_HOST_DEVICE MinorRange sparse_certain_range(const SparsePattern& p, int64_t a) {
  const MinorRange reach = sparse_causal_range(p, a, a + 1);
  if (a < p.dense_majors()) return reach;
  if (!p.has_window()) return {a, a};
  return sparse_intersect({a - p.window, a + p.window + 1}, reach);
}

// The segments of a major tile [a0, a1): for a dense tile (a1 <= dense_majors) the first is
// all its causal range and the second is empty.
HV_HOST_DEVICE MinorRange sparse_global_segment(const SparsePattern& p, int64_t a0, int64_t a1) {
  const MinorRange reach = sparse_causal_range(p, a0, a1);
  if (a1 <= p.dense_majors()) return reach;
  return sparse_intersect({0, p.global_count()}, reach);
}

HV_HOST_DEVICE MinorRange sparse_block_segment(const SparsePattern& p, int64_t a0, int64_t a1) {
  if (a1 <= p.dense_majors() || (!p.has_window() && !p.has_stride())) return {0, 0};
  const int64_t reach = p.has_window() ? p.window : 0;
  const MinorRange block{sparse_max(p.global_count(), a0 - reach), sparse_min(p.length, a1 + reach)};
  return sparse_intersect(block, sparse_causal_range(p, a0, a1));
}

// The strided extras of major index a within the minor range r: minor indices
// first, first + stride, ..., `count` of them (none without a stride).
struct StridedRun {
  int64_t first, count;
};

HV_HOST_DEVICE StridedRun sparse_strided_run(const SparsePattern& p, int64_t a, MinorRange r) {
  if (!p.has_stride()) return {0, 0};
  r = sparse_intersect(r, sparse_causal_range(p, a, a + 1));
  if (r.size() == 0) return {0, 0};
  // The smallest b >= r.begin with b ≡ a (mod stride).
  const int64_t offset = ((a - r.begin) % p.stride + p.stride) % p.stride;
  const int64_t first = r.begin + offset;
  return {first, first < r.end ? (r.end - 1 - first) / p.stride + 1 : 0};
}

// The two runs of strided extras of major index a in a non-dense tile whose block segment is
// `block`: below it (from the end of the global keys) and above it.
HV_HOST_DEVICE StridedRun sparse_strided_below(const SparsePattern& p, int64_t a, MinorRange block) {
  const int64_t end = block.size() > 0 ? block.begin : p.length;
  return sparse_strided_run(p, a, {p.global_count(), end});
}

HV_HOST_DEVICE StridedRun sparse_strided_above(const SparsePattern& p, int64_t a, MinorRange block) {
  if (block.size() == 0) return {0, 0};
  return sparse_strided_run(p, a, {block.end, p.length});
}

// The major tiles of one head: first the dense majors [0, dense_majors), then the rest, each cut
// into tiles of `tile` indices. Tile t covers tile_range(t).
struct SparseTiling {
  int64_t length = 0, dense_majors = 0, tile = 1, dense_tiles = 0, tiles = 0;

  SparseTiling() = default;

  HV_HOST_DEVICE SparseTiling(const SparsePattern& p, int64_t tile_size)
      : length(p.length),
        dense_majors(p.dense_majors()),
        tile(tile_size),
        dense_tiles((dense_majors + tile_size - 1) / tile_size),
        tiles(dense_tiles + (length - dense_majors + tile_size - 1) / tile_size) {}

  HV_HOST_DEVICE MinorRange tile_range(int64_t t) const {
    const bool dense = t < dense_tiles;
    const int64_t begin = dense ? t * tile : dense_majors + (t - dense_tiles) * tile;
    return {begin, sparse_min(begin + tile, dense ? dense_majors : length)};
  }
};

// The minor tiles (at most `width` indices each) of the segments of major tile [a0, a1), in order:
//   for (SparseMinorTiles t(p, a0, a1, width); t.next();) use(t.begin, t.size);
// A segment is cut into equal tiles: a band of 2·window + tile keys splits into even parts, not
// full tiles and a sliver. (A cursor rather than a callback, so that the CPU loop bodies stay in
// the functions compiled per instruction set.)
struct SparseMinorTiles {
  MinorRange segments[2];
  int64_t max_width;
  int segment = -1;
  int64_t begin = 0, size = 0, width = 0;

  HV_HOST_DEVICE SparseMinorTiles(const SparsePattern& p, int64_t a0, int64_t a1, int64_t width_limit)
      : segments{sparse_global_segment(p, a0, a1), sparse_block_segment(p, a0, a1)},
        max_width(width_limit) {}

  HV_HOST_DEVICE bool next() {
    begin += size;
    while (segment < 0 || begin >= segments[segment].end) {
      if (++segment == 2) return false;
      const int64_t extent = segments[segment].size();
      const int64_t parts = (extent + max_width - 1) / max_width;
      width = parts > 0 ? (extent + parts - 1) / parts : 0;
      begin = segments[segment].begin;
      size = 0;
    }
    size = sparse_min(width, segments[segment].end - begin);
    return true;
  }
};

// The strided extras of major index a of tile [a0, a1), in runs of at most `width`:
//   for (SparseStridedRuns r(p, a, a0, a1, width); r.next();) use(r.first, r.count);
// (minor indices r.first + u * p.stride for u < r.count).
struct SparseStridedRuns {
  StridedRun runs[2] = {{0, 0}, {0, 0}};
  int64_t stride, max_width;
  int run = 0;
  int64_t done = 0, first = 0, count = 0;

  HV_HOST_DEVICE SparseStridedRuns(const SparsePattern& p, int64_t a, int64_t a0, int64_t a1,
                                   int64_t width_limit)
      : stride(p.stride), max_width(width_limit) {
    if (a1 <= p.dense_majors() || !p.has_stride()) return;
    const MinorRange block = sparse_block_segment(p, a0, a1);
    runs[0] = sparse_strided_below(p, a, block);
    runs[1] = sparse_strided_above(p, a, block);
  }

  HV_HOST_DEVICE bool next() {
    done += count;
    while (done >= runs[run].count) {
      if (++run == 2) return false;
      done = 0;
      count = 0;
    }
    first = runs[run].first + done * stride;
    count = sparse_min(max_width, runs[run].count - done);
    return true;
  }
};

// ---------------------------------------------------------------------------------------------
// Hopfield retrieval:  ξ_s = softmax(β ξ_{s-1} Xᵀ) X  (s < n),  out = softmax(β ξ_{n-1} Xᵀ) V.
// Every step is one attention pass whose keys are the stored patterns X; the rows of ξ evolve
// independently, so one query row (or a tile of rows) can run all the steps on chip. The score
// and its gradient below are per (query row, stored pattern); the softmax itself is the online
// softmax above.
// ---------------------------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------------------------
// Motion–saliency scores of video patches: per-pixel luma, the 3x3 Sobel gradient magnitude
// (separable: a vertical pass per column, then a horizontal pass per pixel), reflect-101 borders,
// and the blend of the per-frame normalised motion and saliency.
// ---------------------------------------------------------------------------------------------

// The index a reflect-101 border (OpenCV's default, "gfedcb|abcdefgh|gfedcba") reads for i in
// [-1, n]; a line of one pixel reflects onto itself.
HV_HOST_DEVICE int64_t reflect101(int64_t i, int64_t n) {
  if (n == 1) return 0;
  return i < 0 ? -i : (i >= n ? 2 * n - 2 - i : i);
}

template <typename T>
HV_HOST_DEVICE T luma(T red, T green, T blue) {
  return T(0.299) * red + T(0.587) * green + T(0.114) * blue;
}

// The vertical half of both Sobel kernels at one column, from the pixels above, at and below:
// `smooth` (1, 2, 1) feeds the x-gradient and `diff` (-1, 0, 1) the y-gradient.
template <typename T>
struct SobelColumn {
  T smooth, diff;
};

template <typename T>
HV_HOST_DEVICE SobelColumn<T> sobel_column(T up, T mid, T down) {
  return {up + T(2) * mid + down, down - up};
}

// sqrt(gx² + gy²) at a pixel from the column terms of its left, own and right columns:
// gx = smooth(right) - smooth(left), gy = diff(left) + 2 diff(mid) + diff(right).
template <typename T>
HV_HOST_DEVICE T sobel_magnitude(T smooth_left, T smooth_right, T diff_left, T diff_mid,
                                 T diff_right) {
  const T gx = smooth_right - smooth_left;
  const T gy = diff_left + T(2) * diff_mid + diff_right;
  return math::sqrt(gx * gx + gy * gy);
}

template <typename T>
HV_HOST_DEVICE T abs_difference(T a, T b) {
  return a > b ? a - b : b - a;
}

// Each of motion and saliency is divided by its maximum over the frame's patches (+1e-6).
constexpr double kMotionSaliencyEpsilon = 1e-6;

// The running maximum of a frame's patch values, NaN once any value is NaN (as torch.amax), so
// that a NaN pixel spoils its whole frame rather than only its patch.
template <typename T>
HV_HOST_DEVICE T motion_saliency_max(T largest, T value) {
  return value > largest || value != value ? value : largest;
}

template <typename T>
HV_HOST_DEVICE T motion_saliency_score(T motion, T motion_max, T saliency, T saliency_max,
                                       T alpha) {
  const T eps = T(kMotionSaliencyEpsilon);
  return alpha * (motion / (motion_max + eps)) + (T(1) - alpha) * (saliency / (saliency_max + eps));
}

// ---------------------------------------------------------------------------------------------
// Token merging (ToMe bipartite soft matching): unit metric rows and their cosine similarities,
// the (value, index) order of matches in which ties go to the lower index, the merge score of an
// A token, the source range of an output row, and the size-weighted average of its sources.
// ---------------------------------------------------------------------------------------------

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
