// selective_scan CPU kernels for N <= kMaxLaneStates states, by channel lanes. A vector over so
// few states is mostly empty and its C·h is a horizontal sum every step, so a block of up to
// kLanes channels of one batch is scanned together instead: lane l of every vector is channel
// d0 + l, a step is a loop over the N states of whole vectors, and C·h and the backward's sums
// over the states are per-lane sums. The channels of a block read the same B and C rows (a
// variable B or C is one broadcast per (t, n)). Their inputs are transposed into tiles, which
// store one value per (row, lane) at [row * kLanes + lane]; lanes past the block's width repeat
// its first channel and are never stored.
//
// The lane kernels hold a block's states (and in the backward pass their adjoints and dA) in GCC
// vectors across the steps, unrolled over a compile-time N, so that a step touches memory only
// for its inputs and the states the backward pass saved. A vector is one register of the
// instruction set (kBytes), kLanes / its width slices of a block are scanned one after another,
// and a slice's pointers into the (rows, kLanes) tiles start at its first lane.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/cpu_dispatch.h"
#include "common/cpu_widen.h"
#include "selective_scan/selective_scan_cpu.h"
#include "selective_scan/selective_scan_cpu_transpose.h"
#include "selective_scan/selective_scan_step.h"

namespace hvision::selective_scan::cpu_kernels {
namespace {

// The rows of channels channel0 .. channel0 + width - 1 in a buffer of `stride` values a channel.
template <typename S>
std::array<S*, kLanes> lane_rows(S* base, int64_t channel0, int64_t width, int64_t stride) {
  std::array<S*, kLanes> rows{};
  for (int64_t l = 0; l < width; ++l) rows[l] = base + (channel0 + l) * stride;
  return rows;
}

template <typename T>
struct LaneBlock {
  Channel<T> lanes[kLanes];
  int64_t width;

  const Channel<T>& first() const { return lanes[0]; }
};

// B or C of a block: value (t, n, lane) = shared[t * step + n] * per_lane[n * kLanes + lane]. A
// variable projection is shared by the channels (per_lane all ones); a fixed one is per channel
// and constant in time (shared a row of ones, step 0).
template <typename T>
struct LaneProjection {
  const T* shared;
  int64_t step;
  const T* per_lane;  // (N, kLanes)

  bool variable() const { return step != 0; }
  const T* at(int64_t t) const { return shared + t * step; }
};

// A block's inputs as the lane kernels read them: (L, kLanes) tiles of u and of the step factors
// the scan reads (δ, and the gate in the forward pass), (N, kLanes) tiles of A.
template <typename T>
struct LaneInputs {
  const Channel<T>* first;  // sizes and flags
  const T* u;
  StepFactors<T> factors;
  const T* A;
  LaneProjection<T> B, C;
  T skip_d[kLanes];
};

// Per-thread storage of the tiles of one block at a time.
template <typename T>
struct LaneTiles {
  std::vector<T> u, A, B, C, ones, products;
  std::vector<T> dy, du_terms, delta_terms, y;  // LaneStepTiles
  FactorRows<T> rows[kLanes], tiles;
  StepFactors<T> row_factors[kLanes];  // each lane's rows (lanes past the width: the first's)
};

template <typename T>
HV_INLINE LaneProjection<T> lane_projection(const Projection<T>& p, const T* ones, const T* tile) {
  if (p.step != 0) return {p.data, p.step, ones};
  return {ones, 0, tile};
}

// Computes each channel's step factors in row loops and transposes those the scan reads and its
// inputs into `storage`; in the dispatched functions, so that the row loops are vectorised for
// the instruction set.
template <int64_t kBytes, typename T>
HV_INLINE LaneInputs<T> load_lanes(const LaneBlock<T>& block, bool backward,
                                   LaneTiles<T>& storage) {
  const Channel<T>& first = block.first();
  const int64_t L = first.length, N = first.state;
  const bool has_z = first.z != nullptr;
  for (std::vector<T>* tile : {&storage.A, &storage.B, &storage.C}) tile->resize(N * kLanes);
  storage.u.resize(L * kLanes);
  storage.ones.assign(N * kLanes, T(1));
  // The backward pass reads only δ per lane; it applies the gate and dδ/d(delta) in row loops.
  const StepFactors<T> tiles = storage.tiles.get(L * kLanes, has_z && !backward, false);
  LaneInputs<T> x{&first,
                  storage.u.data(),
                  tiles,
                  storage.A.data(),
                  lane_projection(first.B, storage.ones.data(), storage.B.data()),
                  lane_projection(first.C, storage.ones.data(), storage.C.data()),
                  {}};
  StepFactors<T>* rows = storage.row_factors;
  const T *u[kLanes], *A[kLanes], *B[kLanes], *C[kLanes];
  for (int64_t lane = 0; lane < kLanes; ++lane) {
    const Channel<T>& c = block.lanes[lane];
    if (lane < block.width) {
      rows[lane] = storage.rows[lane].get(L, has_z, backward);
      compute_step_factors(c, rows[lane]);
    } else {
      rows[lane] = rows[0];
    }
    u[lane] = c.u;
    A[lane] = c.A;
    B[lane] = c.B.data;
    C[lane] = c.C.data;
    x.skip_d[lane] = c.skip_d;
  }
  for (T* StepFactors<T>::*factor : {&StepFactors<T>::delta, &StepFactors<T>::delta_grad,
                                     &StepFactors<T>::gate, &StepFactors<T>::gate_grad}) {
    if (tiles.*factor == nullptr) continue;
    const T* factor_rows[kLanes];
    for (int64_t lane = 0; lane < kLanes; ++lane) factor_rows[lane] = rows[lane].*factor;
    rows_to_tile_vectors<kBytes>(factor_rows, kLanes, L, tiles.*factor);
  }
  rows_to_tile_vectors<kBytes>(u, kLanes, L, storage.u.data());
  rows_to_tile(A, kLanes, N, storage.A.data());
  if (!x.B.variable()) rows_to_tile(B, kLanes, N, storage.B.data());
  if (!x.C.variable()) rows_to_tile(C, kLanes, N, storage.C.data());
  return x;
}

// One vector per state of a slice (its states, their adjoints, a step's gradients).
template <int64_t kStates, typename V>
struct LaneStates {
  V vectors[kStates];

  V& operator[](int64_t n) { return vectors[n]; }
  const V& operator[](int64_t n) const { return vectors[n]; }
};

// The N vectors of a slice from an (N, stride) tile, and back.
template <int64_t kStates, typename V>
HV_INLINE LaneStates<kStates, V> load_states(const VectorValue<V>* tile, int64_t stride = kLanes) {
  LaneStates<kStates, V> h;
#pragma GCC unroll 16
  for (int64_t n = 0; n < kStates; ++n) h[n] = load_vector<V>(tile + n * stride);
  return h;
}

template <int64_t kStates, typename V>
HV_INLINE void store_states(VectorValue<V>* tile, const LaneStates<kStates, V>& h,
                            int64_t stride = kLanes) {
#pragma GCC unroll 16
  for (int64_t n = 0; n < kStates; ++n) store_vector(tile + n * stride, h[n]);
}

// A tile's pointer advanced to lane `lane0` (null stays null).
template <typename P>
HV_INLINE P at_lane(P tile, int64_t lane0) {
  return tile ? tile + lane0 : tile;
}

// A slice of a block's inputs: every tile pointer advanced to lane `lane0`.
template <typename T>
HV_INLINE LaneInputs<T> slice_inputs(const LaneInputs<T>& x, int64_t lane0) {
  LaneInputs<T> slice = x;
  slice.u = at_lane(x.u, lane0);
  slice.factors = {at_lane(x.factors.delta, lane0), at_lane(x.factors.delta_grad, lane0),
                   at_lane(x.factors.gate, lane0), at_lane(x.factors.gate_grad, lane0)};
  slice.A = at_lane(x.A, lane0);
  slice.B.per_lane = at_lane(x.B.per_lane, lane0);
  slice.C.per_lane = at_lane(x.C.per_lane, lane0);
  return slice;
}

// State n's row of a slice's B or C at step t (`row` = p.at(t)).
template <typename V, typename T>
HV_INLINE V projection_lanes(const LaneProjection<T>& p, const T* row, int64_t n) {
  return row[n] * load_vector<V>(p.per_lane + n * kLanes);
}

// One step of a slice's states, h <- exp(δA) h + B δu, leaving each state's exp(δA) in `decays`
// (N, vector width) unless it is null.
template <int64_t kStates, typename V, typename T>
HV_INLINE void advance_lanes(const LaneInputs<T>& x, int64_t t, LaneStates<kStates, V>& h,
                             T* decays) {
  const V delta = load_vector<V>(x.factors.delta + t * kLanes);
  const V delta_u = delta * load_vector<V>(x.u + t * kLanes);
  const T* B = x.B.at(t);
#pragma GCC unroll 16
  for (int64_t n = 0; n < kStates; ++n) {
    const V decay = scan_decay(delta, load_vector<V>(x.A + n * kLanes));
    if (decays != nullptr) store_vector(decays + n * kVectorWidth<V>, decay);
    h[n] = scan_state_update(h[n], decay, projection_lanes<V>(x.B, B, n), delta_u);
  }
}

// y = C_t · h per lane, summed over n in order.
template <int64_t kStates, typename V, typename T>
HV_INLINE V project_lanes(const LaneInputs<T>& x, int64_t t, const LaneStates<kStates, V>& h) {
  const T* C = x.C.at(t);
  V y{};
#pragma GCC unroll 16
  for (int64_t n = 0; n < kStates; ++n) y += projection_lanes<V>(x.C, C, n) * h[n];
  return y;
}

// The scan of a slice in the forward pass: `state` (N, kLanes) holds the initial states on entry
// and the last on exit, `checkpoints` (chunks, N, kLanes) receives the state entering every
// chunk, `out` (L, kLanes) y = C·h.
template <int64_t kStates, typename V, typename T>
HV_INLINE void forward_lanes(const LaneInputs<T>& x, T* state, T* checkpoints, T* out) {
  const Channel<T>& c = *x.first;
  LaneStates<kStates, V> h = load_states<kStates, V>(state);
  for (int64_t step = 0; step < c.length; ++step) {
    if (step % kScanChunk == 0) store_states(checkpoints + step / kScanChunk * kStates * kLanes, h);
    const int64_t t = c.time(step);
    advance_lanes(x, t, h, static_cast<T*>(nullptr));
    store_vector(out + t * kLanes, project_lanes(x, t, h));
  }
  store_states(state, h);
}

// The (L, kLanes) tiles of the backward scan: dy = dL/dy in, and out the per-step sums over the
// states of the du and dδ terms, and y = C·h (only with z, for dz).
template <typename T>
struct LaneStepTiles {
  T* dy;
  T* du_terms;
  T* delta_terms;
  T* y;
};

// Gradient destinations of a block: its channels' (L,) rows of du, ddelta and dz (dz only with
// z), in the accumulation type; dA (N, kLanes), accumulated; dB and dC the block's (L, N) rows
// for a variable projection and (N, kLanes) tiles for a fixed one, accumulated.
template <typename T>
struct LaneGrads {
  const T* dout[kLanes];
  T* du[kLanes];
  T* ddelta[kLanes];
  T* dz[kLanes];
  T* dA;
  T* dB;
  T* dC;
  T d_skip[kLanes], d_delta_bias[kLanes];
};

// The lane of p (or, from kWidth on, of q) whose value a fold of `half` lanes puts in lane `lane`:
// lanes pair up in blocks of 2 * half, p's block folded into the block's first half and q's into
// its second.
constexpr int64_t fold_source(int64_t lane, int64_t half, int64_t width) {
  return lane % (2 * half) < half ? lane : width + lane - half;
}

// Adds the halves of every block of 2 * kHalf lanes of p and of q: with p holding partial sums of
// sources (a | b) and q of (c | d), the result holds (a c | b d), half as many partials each.
template <int64_t kHalf, typename V, size_t... kLane>
HV_INLINE V fold_pair(V p, V q, std::index_sequence<kLane...>) {
  constexpr int64_t kWidth = kVectorWidth<V>;
  return __builtin_shufflevector(p, q, fold_source(kLane, kHalf, kWidth)...) +
         __builtin_shufflevector(p, q, (fold_source(kLane, kHalf, kWidth) + kHalf)...);
}

// Folds `level` (kCount vectors of partial sums) down to one vector with each source's sum in
// the first lane of its block of (vector width) / kCount lanes.
template <int64_t kHalf, int64_t kCount, typename V>
HV_INLINE V fold_tree(V* level) {
  if constexpr (kHalf == 0) {
    return level[0];
  } else {
    constexpr auto kLaneOrder = std::make_index_sequence<kVectorWidth<V>>{};
    if constexpr (kCount == 1) {
      level[0] = fold_pair<kHalf>(level[0], level[0], kLaneOrder);
    } else {
#pragma GCC unroll 16
      for (int64_t i = 0; i < kCount / 2; ++i) {
        level[i] = fold_pair<kHalf>(level[2 * i], level[2 * i + 1], kLaneOrder);
      }
    }
    return fold_tree<kHalf / 2, std::max<int64_t>(kCount / 2, 1)>(level);
  }
}

constexpr int64_t reverse_bits(int64_t value, int64_t bits) {
  int64_t reversed = 0;
  for (int64_t b = 0; b < bits; ++b) reversed |= ((value >> b) & 1) << (bits - 1 - b);
  return reversed;
}

constexpr int64_t log2_ceil(int64_t value) {
  int64_t bits = 0;
  while ((int64_t{1} << bits) < value) ++bits;
  return bits;
}

// row[n] += the sum over the lanes of v[n], for the states from kFirst on: a tree of shuffles and
// adds over up to a vector's width of vectors at once (about 3 vector operations a sum at
// N = 8 on AVX-512), where summing each on its own would end in scalar steps. The tree
// interleaves its inputs' sums in bit-reversed order, so it takes them in that order.
template <int64_t kFirst = 0, int64_t kStates, typename V>
HV_INLINE void add_lane_sums(const LaneStates<kStates, V>& v, VectorValue<V>* row) {
  constexpr int64_t kWidth = kVectorWidth<V>;
  constexpr int64_t kGroup = std::min(kStates - kFirst, kWidth);
  constexpr int64_t kBits = log2_ceil(kGroup);
  constexpr int64_t kCount = int64_t{1} << kBits;
  V level[kCount];
#pragma GCC unroll 16
  for (int64_t i = 0; i < kCount; ++i) {
    const int64_t n = reverse_bits(i, kBits);
    level[i] = n < kGroup ? v[kFirst + n] : V{};
  }
  const V sums = fold_tree<kWidth / 2, kCount>(level);
#pragma GCC unroll 16
  for (int64_t n = 0; n < kGroup; ++n) row[kFirst + n] += sums[n * (kWidth / kCount)];
  if constexpr (kFirst + kGroup < kStates) add_lane_sums<kFirst + kGroup>(v, row);
}

// Adds one step's gradients of a slice's b (or c) to the projection's: summed over the lanes into
// row t of a variable projection, per lane into the (N, kLanes) tile of a fixed one.
template <int64_t kStates, typename V, typename T>
HV_INLINE void accumulate_projection_grad(const LaneProjection<T>& p, int64_t t,
                                          const LaneStates<kStates, V>& step_grad, T* grad) {
  if (p.variable()) {
    add_lane_sums(step_grad, grad + t * p.step);
    return;
  }
#pragma GCC unroll 16
  for (int64_t n = 0; n < kStates; ++n) {
    store_vector(grad + n * kLanes, load_vector<V>(grad + n * kLanes) + step_grad[n]);
  }
}

// The scan of a slice in the backward pass, chunk by chunk as backward_channel: `tiles.dy` is zero
// in the lanes past the block's width, `adjoint` (N, kLanes) holds dL/d(last state) on entry and
// dL/d(initial state) on exit, `dA` (N, kLanes) is accumulated, `dB` and `dC` as in LaneGrads
// (a fixed projection's advanced to the slice); `scratch` has backward_scratch_size(N) * kLanes
// values.
template <int64_t kStates, typename V, typename T>
HV_INLINE void backward_lanes(const LaneInputs<T>& x, const LaneStepTiles<T>& tiles,
                              const T* checkpoints, T* adjoint_tile, T* dA_tile, T* dB, T* dC,
                              T* scratch) {
  constexpr int64_t kSaved = kStates * kVectorWidth<V>;  // a step's saved states or decays
  const Channel<T>& c = *x.first;
  T* states = scratch;
  T* decays = states + (kScanChunk + 1) * kSaved;
  LaneStates<kStates, V> adjoint = load_states<kStates, V>(adjoint_tile);
  LaneStates<kStates, V> dA = load_states<kStates, V>(dA_tile);
  for (int64_t chunk = scan_num_chunks(c.length) - 1; chunk >= 0; --chunk) {
    const int64_t first = chunk * kScanChunk;
    const int64_t count = std::min(kScanChunk, c.length - first);
    LaneStates<kStates, V> h = load_states<kStates, V>(checkpoints + chunk * kStates * kLanes);
    store_states(states, h, kVectorWidth<V>);
    for (int64_t k = 0; k < count; ++k) {
      advance_lanes(x, c.time(first + k), h, decays + k * kSaved);
      store_states(states + (k + 1) * kSaved, h, kVectorWidth<V>);
    }
    for (int64_t k = count - 1; k >= 0; --k) {
      const int64_t t = c.time(first + k);
      const int64_t row = t * kLanes;
      const V delta = load_vector<V>(x.factors.delta + row);
      const V u = load_vector<V>(x.u + row);
      const V dy = load_vector<V>(tiles.dy + row);
      // h is read first and dropped (C·h, dC) before the state loop: with every step's vectors
      // of h, h_prev, decay, dB and dC held at once, even AVX-512's registers spill.
      h = load_states<kStates, V>(states + (k + 1) * kSaved, kVectorWidth<V>);
      if (tiles.y) store_vector(tiles.y + row, project_lanes(x, t, h));
      LaneStates<kStates, V> step_grad;
#pragma GCC unroll 16
      for (int64_t n = 0; n < kStates; ++n) step_grad[n] = dy * h[n];
      accumulate_projection_grad(x.C, t, step_grad, dC);
      const T* h_prev = states + k * kSaved;
      const T* decay = decays + k * kSaved;
      const T* B = x.B.at(t);
      const T* C = x.C.at(t);
      V du_sum{}, ddelta_sum{};
#pragma GCC unroll 16
      for (int64_t n = 0; n < kStates; ++n) {
        const int64_t i = n * kVectorWidth<V>;
        adjoint[n] += dy * projection_lanes<V>(x.C, C, n);
        step_grad[n] = scan_state_backward(adjoint[n], load_vector<V>(h_prev + i),
                                           load_vector<V>(decay + i), delta,
                                           load_vector<V>(x.A + n * kLanes),
                                           projection_lanes<V>(x.B, B, n), u, ddelta_sum, du_sum,
                                           dA[n]);
      }
      store_vector(tiles.du_terms + row, du_sum);
      store_vector(tiles.delta_terms + row, ddelta_sum);
      accumulate_projection_grad(x.B, t, step_grad, dB);
    }
  }
  store_states(adjoint_tile, adjoint);
  store_states(dA_tile, dA);
}

// Calls fn(std::integral_constant<int64_t, N>{}) for a state size N in 1 .. kMaxLaneStates: the
// lane kernels are built for each.
template <int64_t kStates = 1, typename Fn>
HV_INLINE void with_lane_states(int64_t N, Fn&& fn) {
  if (N == kStates) {
    fn(std::integral_constant<int64_t, kStates>{});
  } else if constexpr (kStates < kMaxLaneStates) {
    with_lane_states<kStates + 1>(N, fn);
  }
}

// Calls fn(std::integral_constant<int64_t, N>{}, lane0) for the first lane of every slice of
// kBytes vectors that holds one of a block's channels.
template <int64_t kBytes, typename T, typename Fn>
HV_INLINE void for_each_slice(const LaneBlock<T>& block, Fn&& fn) {
  constexpr int64_t kWidth = kBytes / sizeof(T);
  static_assert(kLanes % kWidth == 0, "a block is whole vectors");
  with_lane_states(block.first().state, [&](auto states) HV_INLINE_LAMBDA {
    for (int64_t lane0 = 0; lane0 < block.width; lane0 += kWidth) fn(states, lane0);
  });
}

// The forward pass of a block: y, then the output in the `out` tile, stored to the rows of the
// block's channels in `out_rows`.
template <int64_t kBytes, typename T, typename S>
HV_INLINE void scan_forward_lanes(const LaneBlock<T>& block, LaneTiles<T>& storage, T* state,
                                  T* checkpoints, T* out, S* const* out_rows) {
  const LaneInputs<T> x = load_lanes<kBytes>(block, false, storage);
  for_each_slice<kBytes>(block, [&](auto states, int64_t lane0) HV_INLINE_LAMBDA {
    forward_lanes<decltype(states)::value, Vector<T, kBytes>>(
        slice_inputs(x, lane0), state + lane0, checkpoints + lane0, out + lane0);
  });
  const T* u = x.u;
  const T* gate = x.factors.gate;
  for (int64_t t = 0; t < block.first().length; ++t) {
    const int64_t i = t * kLanes;
#pragma omp simd
    for (int64_t l = 0; l < kLanes; ++l) {
      out[i + l] = scan_output(out[i + l], u[i + l], x.skip_d[l], gate ? gate[i + l] : T(1));
    }
  }
  tile_to_rows_vectors<kBytes>(out, block.width, block.first().length, out_rows);
}

// Backward of scan_output over one channel's row: dy and, with kWithDz, dz from the row of y
// (`y_dz` holds y on entry and dz on exit). The choices are template arguments and the length and
// pointers local copies so that GCC vectorises the loop: with a branch in it, or reading through
// `c` and `f`, it left it scalar (a third of a block's backward pass at N = 4), and under
// `omp simd` it kept each step's Gate in memory and gave up.
template <bool kGated, bool kWithDz, typename T>
HV_INLINE void output_backward_loop(const Channel<T>& c, const StepFactors<T>& f, const T* dout,
                                    T* dy, T* y_dz) {
  const T *u = c.u, *gate = f.gate, *gate_grad = f.gate_grad;
  const T skip_d = c.skip_d;
  const int64_t L = c.length;
  for (int64_t t = 0; t < L; ++t) {
    const Gate<T> step_gate = kGated ? Gate<T>{gate[t], gate_grad[t]} : Gate<T>{T(1), T(0)};
    T dz;
    scan_output_backward(dout[t], kWithDz ? y_dz[t] : T(0), u[t], skip_d, step_gate, dy[t], dz);
    if constexpr (kWithDz) y_dz[t] = dz;
  }
}

// dy of one channel's row and, given the row of y in `y_dz` (only with z), dz in its place.
template <typename T>
HV_INLINE void output_backward_row(const Channel<T>& c, const StepFactors<T>& f, const T* dout,
                                   T* dy, T* y_dz) {
  if (f.gate == nullptr) {
    output_backward_loop<false, false>(c, f, dout, dy, y_dz);
  } else if (y_dz == nullptr) {
    output_backward_loop<true, false>(c, f, dout, dy, y_dz);
  } else {
    output_backward_loop<true, true>(c, f, dout, dy, y_dz);
  }
}

// The backward pass of a block: dy in row loops, the scan on tiles, then du, ddelta, dz, dD and
// d(delta_bias) in row loops from the scan's per-step sums. Row loops read and write one value
// per step where the scan would need a transposed tile each.
template <int64_t kBytes, typename T>
HV_INLINE void scan_backward_lanes(const LaneBlock<T>& block, LaneTiles<T>& storage,
                                   const T* checkpoints, T* adjoint, T* scratch,
                                   LaneGrads<T>& g) {
  const LaneInputs<T> x = load_lanes<kBytes>(block, true, storage);
  const int64_t L = block.first().length, width = block.width;
  const bool has_z = block.first().z != nullptr;
  storage.dy.assign(L * kLanes, T(0));
  for (std::vector<T>* tile : {&storage.du_terms, &storage.delta_terms, &storage.y}) {
    tile->resize(L * kLanes);
  }
  storage.products.resize(L);
  for (int64_t lane = 0; lane < width; ++lane) {  // dy, staged in the du row
    output_backward_row(block.lanes[lane], storage.row_factors[lane], g.dout[lane], g.du[lane],
                        static_cast<T*>(nullptr));
  }
  rows_to_tile_vectors<kBytes>(g.du, width, L, storage.dy.data());
  const LaneStepTiles<T> tiles{storage.dy.data(), storage.du_terms.data(),
                               storage.delta_terms.data(), has_z ? storage.y.data() : nullptr};
  for_each_slice<kBytes>(block, [&](auto states, int64_t lane0) HV_INLINE_LAMBDA {
    const LaneStepTiles<T> slice_tiles{at_lane(tiles.dy, lane0), at_lane(tiles.du_terms, lane0),
                                       at_lane(tiles.delta_terms, lane0),
                                       at_lane(tiles.y, lane0)};
    // A variable projection's gradient is the block's shared (L, N) rows, a fixed one's a tile.
    const auto slice_grad = [lane0](const LaneProjection<T>& p, T* grad) HV_INLINE_LAMBDA {
      return p.variable() ? grad : grad + lane0;
    };
    backward_lanes<decltype(states)::value, Vector<T, kBytes>>(
        slice_inputs(x, lane0), slice_tiles, checkpoints + lane0, adjoint + lane0, g.dA + lane0,
        slice_grad(x.B, g.dB), slice_grad(x.C, g.dC), scratch);
  });
  tile_to_rows_vectors<kBytes>(tiles.du_terms, width, L, g.du);
  tile_to_rows_vectors<kBytes>(tiles.delta_terms, width, L, g.ddelta);
  if (has_z) tile_to_rows_vectors<kBytes>(tiles.y, width, L, g.dz);
  T* dy = storage.products.data();
  for (int64_t lane = 0; lane < width; ++lane) {
    const Channel<T>& c = block.lanes[lane];
    const StepFactors<T>& f = storage.row_factors[lane];
    output_backward_row(c, f, g.dout[lane], dy, has_z ? g.dz[lane] : nullptr);
    // Local copies: read through `c` and `f`, GCC left this loop scalar.
    T* du = g.du[lane];
    T* ddelta = g.ddelta[lane];
    const T *u = c.u, *delta_grad = f.delta_grad;
    const T skip_d = c.skip_d;
#pragma omp simd
    for (int64_t t = 0; t < L; ++t) {
      du[t] += dy[t] * skip_d;
      ddelta[t] *= delta_grad[t];
      dy[t] *= u[t];
    }
    g.d_skip[lane] = sum_row(dy, L);
    g.d_delta_bias[lane] = sum_row(ddelta, L);
  }
}

HV_CPU_VECTOR_DISPATCH(run_forward_lanes, scan_forward_lanes)
HV_CPU_VECTOR_DISPATCH(run_backward_lanes, scan_backward_lanes)

// Channels d0 .. d0 + width - 1 of batch b, which read the same B and C rows.
template <typename scalar_t, typename T>
LaneBlock<T> load_block(const ScanView<scalar_t, T>& view, int64_t b, int64_t d0, int64_t width,
                        std::vector<T> (&buffers)[kLanes][3]) {
  LaneBlock<T> block;
  block.width = width;
  for (int64_t lane = 0; lane < kLanes; ++lane) {
    block.lanes[lane] =
        lane < width ? view.load_channel(b, d0 + lane, buffers[lane]) : block.lanes[0];
  }
  return block;
}

// Splits channels [begin, end) into blocks of at most kLanes channels that read the same B and C
// rows (a block never crosses a group) and calls fn(d0, width) for each, in order.
template <typename Fn>
void for_each_lane_block(const ScanInputs& in, int64_t begin, int64_t end, Fn&& fn) {
  const auto group_end = [&in](int64_t groups, int64_t d) {
    if (groups == 0) return in.dim;
    const int64_t size = in.dim / groups;
    return (d / size + 1) * size;
  };
  for (int64_t d = begin; d < end;) {
    const int64_t next =
        std::min({d + kLanes, end, group_end(in.groups_B, d), group_end(in.groups_C, d)});
    fn(d, next - d);
    d = next;
  }
}

// The forward pass with channel lanes: tasks are (batch, kLanes consecutive channels).
template <typename scalar_t>
void forward_lanes_kernel(const ScanInputs& in, at::Tensor& out, at::Tensor& last_state,
                          at::Tensor& checkpoints) {
  using T = at::opmath_type<scalar_t>;
  const ScanView<scalar_t, T> view(in);
  const int64_t N = in.state, L = in.length;
  const int64_t chunks = scan_num_chunks(L);
  const int64_t slots = (in.dim + kLanes - 1) / kLanes;
  const T* initial = in.initial_state ? in.initial_state->data_ptr<T>() : nullptr;
  at::parallel_for(0, in.batch * slots, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> rows[kLanes][3], out_tile(L * kLanes), state(N * kLanes);
    std::vector<T> checkpoint_tile(chunks * N * kLanes);
    LaneTiles<T> storage;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / slots, slot_begin = task % slots * kLanes;
      const int64_t slot_end = std::min(in.dim, slot_begin + kLanes);
      for_each_lane_block(in, slot_begin, slot_end, [&](int64_t d0, int64_t width) {
        const int64_t channel0 = b * in.dim + d0;
        std::fill(state.begin(), state.end(), T(0));
        if (initial) {
          rows_to_tile(lane_rows(initial, channel0, width, N).data(), width, N, state.data());
        }
        run_forward_lanes(load_block(view, b, d0, width, rows), storage, state.data(),
                          checkpoint_tile.data(), out_tile.data(),
                          lane_rows(out.data_ptr<scalar_t>(), channel0, width, L).data());
        tile_to_rows(state.data(), width, N,
                     lane_rows(last_state.data_ptr<T>(), channel0, width, N).data());
        tile_to_rows(checkpoint_tile.data(), width, chunks * N,
                     lane_rows(checkpoints.data_ptr<T>(), channel0, width, chunks * N).data());
      });
    }
  });
}

// The backward pass with channel lanes: each task scans its channels a lane block at a time.
template <typename scalar_t>
void backward_lanes_kernel(const ScanInputs& in, const at::Tensor& dout,
                           const std::optional<at::Tensor>& dlast_state,
                           const at::Tensor& checkpoints, GradBuffers& g, int64_t blocks) {
  using T = at::opmath_type<scalar_t>;
  const ScanView<scalar_t, T> view(in);
  const int64_t N = in.state, L = in.length;
  const int64_t chunks = scan_num_chunks(L);
  const int64_t state_tile = N * kLanes;
  at::parallel_for(0, in.batch * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> rows[kLanes][3], grad_rows[kLanes][4], checkpoint_tile(chunks * state_tile);
    std::vector<T> adjoint(state_tile), dA(state_tile), dB(state_tile), dC(state_tile);
    std::vector<T> scratch(backward_scratch_size(N) * kLanes);
    LaneTiles<T> storage;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, block = task % blocks;
      const auto [first, last] = task_channels(in, blocks, block);
      for_each_lane_block(in, first, last, [&](int64_t d0, int64_t width) {
        const int64_t channel0 = b * in.dim + d0;
        // Lanes past the width start from zero states and get no gradient.
        for (std::vector<T>* tile : {&checkpoint_tile, &adjoint, &dA, &dB, &dC}) {
          std::fill(tile->begin(), tile->end(), T(0));
        }
        rows_to_tile(lane_rows(checkpoints.data_ptr<T>(), channel0, width, chunks * N).data(),
                     width, chunks * N, checkpoint_tile.data());
        if (dlast_state) {
          rows_to_tile(lane_rows(dlast_state->data_ptr<T>(), channel0, width, N).data(), width,
                       N, adjoint.data());
        }
        LaneGrads<T> grads{{},
                           {},
                           {},
                           {},
                           dA.data(),
                           in.B_variable()
                               ? projection_grad<T>(g.dB, in.groups_B, in, blocks, b, block, d0)
                               : dB.data(),
                           in.C_variable()
                               ? projection_grad<T>(g.dC, in.groups_C, in, blocks, b, block, d0)
                               : dC.data(),
                           {},
                           {}};
        const auto row = [&](const at::Tensor& t, int64_t lane) {
          return t.data_ptr<scalar_t>() + (channel0 + lane) * L;
        };
        for (int64_t lane = 0; lane < width; ++lane) {
          std::vector<T>* buffers = grad_rows[lane];
          grads.dout[lane] = widen(row(dout, lane), L, buffers[0]);
          grads.du[lane] = output_row<T>(row(g.du, lane), L, buffers[1]);
          grads.ddelta[lane] = output_row<T>(row(g.ddelta, lane), L, buffers[2]);
          grads.dz[lane] = in.z ? output_row<T>(row(g.dz, lane), L, buffers[3]) : nullptr;
        }
        run_backward_lanes(load_block(view, b, d0, width, rows), storage, checkpoint_tile.data(),
                           adjoint.data(), scratch.data(), grads);
        const auto store = [&](const std::vector<T>& tile, int64_t count, auto* base) {
          tile_to_rows(tile.data(), width, count, lane_rows(base, channel0, width, count).data());
        };
        for (int64_t lane = 0; lane < width; ++lane) {
          narrow_row(grads.du[lane], row(g.du, lane), L);
          narrow_row(grads.ddelta[lane], row(g.ddelta, lane), L);
          if (in.z) narrow_row(grads.dz[lane], row(g.dz, lane), L);
        }
        store(dA, N, g.dA.data_ptr<T>());
        if (!in.B_variable()) store(dB, N, g.dB.data_ptr<T>());
        if (!in.C_variable()) store(dC, N, g.dC.data_ptr<T>());
        store(adjoint, N, g.d_initial_state.data_ptr<T>());
        std::copy_n(grads.d_skip, width, g.dD.data_ptr<T>() + channel0);
        std::copy_n(grads.d_delta_bias, width, g.d_delta_bias.data_ptr<T>() + channel0);
      });
    }
  });
}

}  // namespace

void forward_lanes_cpu(const ScanInputs& in, at::Tensor& out, at::Tensor& last_state,
                       at::Tensor& checkpoints) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.u.scalar_type(),
                                  "selective_scan_fwd_cpu", [&] {
                                    forward_lanes_kernel<scalar_t>(in, out, last_state,
                                                                   checkpoints);
                                  });
}

void backward_lanes_cpu(const ScanInputs& in, const at::Tensor& dout,
                        const std::optional<at::Tensor>& dlast_state,
                        const at::Tensor& checkpoints, GradBuffers& g, int64_t blocks) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.u.scalar_type(),
                                  "selective_scan_bwd_cpu", [&] {
                                    backward_lanes_kernel<scalar_t>(in, dout, dlast_state,
                                                                    checkpoints, g, blocks);
                                  });
}

}  // namespace hvision::selective_scan::cpu_kernels
