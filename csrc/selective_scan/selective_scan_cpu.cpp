// selective_scan CPU kernels. Work is split over (batch, channel) with at::parallel_for; within a
// channel the time loop is sequential. With many states (N > kMaxLaneStates) the N states of a
// step form one vector loop (`omp simd`); with few, a block of kLanes channels is scanned together,
// one channel per vector lane. Both are compiled per instruction set (HV_CPU_DISPATCH). Inputs in
// fp16/bf16 are widened one row at a time; everything accumulates in float (double for float64
// inputs).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/cpu_dispatch.h"
#include "common/cpu_widen.h"
#include "common/step_math.h"
#include "selective_scan/selective_scan.h"

namespace hvision::selective_scan {
namespace {

// The backward pass splits each batch's channels into at most this many blocks, one task each.
// A task sums its channels' dB/dC into a private buffer and the buffers are summed in a fixed
// order afterwards, so gradients are deterministic whatever the thread count.
constexpr int64_t kMaxChannelBlocks = 16;

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

// Per-channel gradient destinations. dB/dC follow the same Projection layout as B/C and are
// accumulated (+=); dA likewise.
template <typename T>
struct ChannelGrads {
  T* du;
  T* ddelta;
  T* dz;  // nullptr without z
  T* dA;
  T* dB;
  T* dC;
  T d_skip = 0, d_delta_bias = 0;
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

// kStates > 0 fixes the state size at compile time (N = 16 and 8 get straight-line vector
// code); 0 reads it from the channel.
template <int64_t kStates, typename T>
HV_INLINE void forward_channel(const Channel<T>& c, const StepFactors<T>& f, T* state, T* out,
                               T* checkpoints, T* products) {
  compute_step_factors(c, f);
  const int64_t N = kStates > 0 ? kStates : c.state;
  const T* A = c.A;
  for (int64_t step = 0; step < c.length; ++step) {
    if (step % kScanChunk == 0) {
      std::copy_n(state, N, checkpoints + step / kScanChunk * N);
    }
    const int64_t t = c.time(step);
    const T delta = f.delta[t];
    const T delta_u = delta * c.u[t];
    const T* B = c.B.at(t);
    const T* C = c.C.at(t);
#pragma omp simd
    for (int64_t n = 0; n < N; ++n) {
      state[n] = scan_state_update(state[n], scan_decay(delta, A[n]), B[n], delta_u);
      products[n] = C[n] * state[n];
    }
    out[t] = sum_row(products, N);
  }
  const T* u = c.u;
  const T* gate = f.gate;
  const T skip_d = c.skip_d;
#pragma omp simd
  for (int64_t t = 0; t < c.length; ++t) {
    out[t] = scan_output(out[t], u[t], skip_d, gate ? gate[t] : T(1));
  }
}

// Recomputes the states of one chunk from its checkpoint: states[k] enters step first + k
// (k = 0..count), decays[k] is that step's exp(δA).
template <int64_t kStates, typename T>
HV_INLINE void recompute_chunk(const Channel<T>& c, const T* delta, int64_t first, int64_t count,
                               const T* checkpoint, T* states, T* decays) {
  const int64_t N = kStates > 0 ? kStates : c.state;
  const T* A = c.A;
  std::copy_n(checkpoint, N, states);
  for (int64_t k = 0; k < count; ++k) {
    const int64_t t = c.time(first + k);
    const T step_delta = delta[t];
    const T delta_u = step_delta * c.u[t];
    const T* B = c.B.at(t);
    const T* prev = states + k * N;
    T* next = states + (k + 1) * N;
    T* decay = decays + k * N;
#pragma omp simd
    for (int64_t n = 0; n < N; ++n) {
      decay[n] = scan_decay(step_delta, A[n]);
      next[n] = scan_state_update(prev[n], decay[n], B[n], delta_u);
    }
  }
}

// Scratch of the backward pass of one channel, in values.
inline int64_t backward_scratch_size(int64_t N) { return (2 * kScanChunk + 3) * N; }

// Walks one channel backwards, chunk by chunk. `adjoint` holds dL/d(last state) on entry and
// dL/d(initial state) on exit; `scratch` has backward_scratch_size(N) values.
template <int64_t kStates, typename T>
HV_INLINE void backward_channel(const Channel<T>& c, const StepFactors<T>& f, const T* dout,
                                const T* checkpoints, T* adjoint, T* scratch,
                                ChannelGrads<T>& g) {
  compute_step_factors(c, f);
  const int64_t N = kStates > 0 ? kStates : c.state;
  T* states = scratch;
  T* decays = states + (kScanChunk + 1) * N;
  T* delta_terms = decays + kScanChunk * N;  // per-state terms of the step's sums
  T* u_terms = delta_terms + N;
  // Local copies of the pointers: the stores below must not make the compiler reload them.
  const T* A = c.A;
  T* dA = g.dA;
  for (int64_t chunk = scan_num_chunks(c.length) - 1; chunk >= 0; --chunk) {
    const int64_t first = chunk * kScanChunk;
    const int64_t count = std::min(kScanChunk, c.length - first);
    recompute_chunk<kStates>(c, f.delta, first, count, checkpoints + chunk * N, states, decays);
    for (int64_t k = count - 1; k >= 0; --k) {
      const int64_t t = c.time(first + k);
      const T delta = f.delta[t];
      const T u = c.u[t];
      const T* h = states + (k + 1) * N;
      const T* h_prev = states + k * N;
      const T* decay = decays + k * N;
      const T* B = c.B.at(t);
      const T* C = c.C.at(t);
      T y = 0;  // C·h, needed only for dz; its products are staged in u_terms (free here)
      Gate<T> gate{T(1), T(0)};
      if (c.z) {
        gate = {f.gate[t], f.gate_grad[t]};
#pragma omp simd
        for (int64_t n = 0; n < N; ++n) u_terms[n] = C[n] * h[n];
        y = sum_row(u_terms, N);
      }
      T dy, dz;
      scan_output_backward(dout[t], y, u, c.skip_d, gate, dy, dz);
      if (g.dz) g.dz[t] = dz;
      g.d_skip += dy * u;

      T* dB = g.dB + t * c.B.step;
      T* dC = g.dC + t * c.C.step;
#pragma omp simd
      for (int64_t n = 0; n < N; ++n) {
        dC[n] += dy * h[n];
        adjoint[n] += dy * C[n];
        delta_terms[n] = 0;
        u_terms[n] = 0;
        dB[n] += scan_state_backward(adjoint[n], h_prev[n], decay[n], delta, A[n], B[n], u,
                                     delta_terms[n], u_terms[n], dA[n]);
      }
      g.du[t] = dy * c.skip_d + sum_row(u_terms, N);
      g.ddelta[t] = sum_row(delta_terms, N) * f.delta_grad[t];
      g.d_delta_bias += g.ddelta[t];
    }
  }
}

// Mamba's default state size, with a straight-line build of its own (compiled per instruction
// set, as every build).
constexpr int64_t kMambaStates = 16;

template <typename T>
HV_INLINE void scan_forward_channel(const Channel<T>& c, const StepFactors<T>& f, T* state, T* out,
                                    T* checkpoints, T* products) {
  if (c.state == kMambaStates) {
    forward_channel<kMambaStates>(c, f, state, out, checkpoints, products);
  } else {
    forward_channel<0>(c, f, state, out, checkpoints, products);
  }
}

template <typename T>
HV_INLINE void scan_backward_channel(const Channel<T>& c, const StepFactors<T>& f, const T* dout,
                                     const T* checkpoints, T* adjoint, T* scratch,
                                     ChannelGrads<T>& g) {
  if (c.state == kMambaStates) {
    backward_channel<kMambaStates>(c, f, dout, checkpoints, adjoint, scratch, g);
  } else {
    backward_channel<0>(c, f, dout, checkpoints, adjoint, scratch, g);
  }
}

HV_CPU_DISPATCH(run_forward_channel, scan_forward_channel)
HV_CPU_DISPATCH(run_backward_channel, scan_backward_channel)

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

// ---------------------------------------------------------------------------------------------
// Channel lanes, for N <= kMaxLaneStates. A vector over so few states is mostly empty and its
// C·h is a horizontal sum every step, so a block of up to kLanes channels of one batch is scanned
// together instead: lane l of every vector is channel d0 + l, a step is a loop over the N states
// of whole vectors, and C·h and the backward's sums over the states are per-lane sums. The
// channels of a block read the same B and C rows (a variable B or C is one broadcast per
// (t, n)). Their inputs are transposed into tiles, which store one value per (row, lane) at
// [row * kLanes + lane]; lanes past the block's width repeat its first channel and are never
// stored.
// ---------------------------------------------------------------------------------------------

// Channels per block: one AVX-512 vector of float, two AVX2 vectors.
constexpr int64_t kLanes = 16;
// Up to the 8 states of the small presets: the per-state build's vectors would be at most half
// full on AVX-512.
constexpr int64_t kMaxLaneStates = 8;

bool uses_lanes(const ScanInputs& in) { return in.state <= kMaxLaneStates; }

// The lane kernels hold a block's states (and in the backward pass their adjoints and dA) in GCC
// vectors across the steps, unrolled over a compile-time N, so that a step touches memory only
// for its inputs and the states the backward pass saved. A vector is one register of the
// instruction set (kBytes), kLanes / its width slices of a block are scanned one after another,
// and a slice's pointers into the (rows, kLanes) tiles start at its first lane.
template <typename V>
HV_INLINE V load_vector(const VectorValue<V>* values) {
  V v;
  __builtin_memcpy(&v, values, sizeof(v));
  return v;
}

template <typename V>
HV_INLINE void store_vector(VectorValue<V>* values, const V& v) {
  __builtin_memcpy(values, &v, sizeof(v));
}

// Tiles from and to the rows of a block's channels (the first `lanes`), kTransposeRows rows of the
// tile at a time: filling or reading a whole tile one lane at a time would touch one value per
// cache line and keep none of its lines in L1.
constexpr int64_t kTransposeRows = 64;

template <typename T, typename Row>
void rows_to_tile(const Row* rows, int64_t lanes, int64_t count, T* tile) {
  for (int64_t first = 0; first < count; first += kTransposeRows) {
    const int64_t last = std::min(count, first + kTransposeRows);
    for (int64_t l = 0; l < lanes; ++l) {
      for (int64_t i = first; i < last; ++i) tile[i * kLanes + l] = static_cast<T>(rows[l][i]);
    }
  }
}

template <typename T, typename Row>
void tile_to_rows(const T* tile, int64_t lanes, int64_t count, const Row* rows) {
  using S = std::remove_pointer_t<Row>;
  for (int64_t first = 0; first < count; first += kTransposeRows) {
    const int64_t last = std::min(count, first + kTransposeRows);
    for (int64_t l = 0; l < lanes; ++l) {
      for (int64_t i = first; i < last; ++i) rows[l][i] = static_cast<S>(tile[i * kLanes + l]);
    }
  }
}

// Swaps the off-diagonal kHalf x kHalf blocks of every 2 kHalf x 2 kHalf block of the square `v`
// (as many vectors as lanes), then those of half the size: from kHalf = width / 2 down, a
// transpose in width x log2(width) two-vector shuffles.
template <int64_t kHalf, typename V, size_t... kLane>
HV_INLINE void swap_off_diagonal(V* v, std::index_sequence<kLane...> order) {
  constexpr int64_t kWidth = kVectorWidth<V>;
#pragma GCC unroll 16
  for (int64_t r = 0; r < kWidth; ++r) {
    if (r & kHalf) continue;
    const V upper = v[r], lower = v[r + kHalf];
    v[r] = __builtin_shufflevector(upper, lower,
                                   (kLane & kHalf ? kWidth + kLane - kHalf : kLane)...);
    v[r + kHalf] = __builtin_shufflevector(upper, lower,
                                           (kLane & kHalf ? kWidth + kLane : kLane + kHalf)...);
  }
  if constexpr (kHalf > 1) swap_off_diagonal<kHalf / 2>(v, order);
}

template <typename V>
HV_INLINE void transpose_square(V* v) {
  swap_off_diagonal<kVectorWidth<V> / 2>(v, std::make_index_sequence<kVectorWidth<V>>{});
}

// Transposes every whole square of one vector's width of rows and lanes between a block's rows
// and a tile (into the tile with kToTile, else out of it) through registers, kTransposeRows rows
// at a time as rows_to_tile, and returns how many rows and lanes the squares cover.
template <bool kToTile, int64_t kBytes, typename Row, typename TileRow>
HV_INLINE std::pair<int64_t, int64_t> transpose_squares(const Row* rows, int64_t lanes,
                                                        int64_t count, TileRow tile) {
  using V = Vector<std::remove_cv_t<std::remove_pointer_t<Row>>, kBytes>;
  constexpr int64_t kWidth = kVectorWidth<V>;
  const int64_t whole_lanes = lanes / kWidth * kWidth, whole_count = count / kWidth * kWidth;
  for (int64_t first = 0; first < whole_count; first += kTransposeRows) {
    const int64_t last = std::min(whole_count, first + kTransposeRows);
    for (int64_t l0 = 0; l0 < whole_lanes; l0 += kWidth) {
      for (int64_t i0 = first; i0 < last; i0 += kWidth) {
        const auto row = [&](int64_t k) HV_INLINE_LAMBDA { return rows[l0 + k] + i0; };
        const auto tile_row = [&](int64_t k) HV_INLINE_LAMBDA {
          return tile + (i0 + k) * kLanes + l0;
        };
        V square[kWidth];
#pragma GCC unroll 16
        for (int64_t k = 0; k < kWidth; ++k) {
          square[k] = load_vector<V>(kToTile ? row(k) : tile_row(k));
        }
        transpose_square(square);
#pragma GCC unroll 16
        for (int64_t k = 0; k < kWidth; ++k) {
          if constexpr (kToTile) {
            store_vector(tile_row(k), square[k]);
          } else {
            store_vector(row(k), square[k]);
          }
        }
      }
    }
  }
  return {whole_count, whole_lanes};
}

// rows_to_tile and tile_to_rows in the dispatched kernels: for rows in the accumulation type,
// whole squares through registers and the rows and lanes past them value by value; for others
// (fp16/bf16 outputs) all value by value.
template <int64_t kBytes, typename T>
HV_INLINE void rows_to_tile_vectors(const T* const* rows, int64_t lanes, int64_t count, T* tile) {
  const auto [whole_count, whole_lanes] = transpose_squares<true, kBytes>(rows, lanes, count, tile);
  const T* rest[kLanes];
  for (int64_t l = 0; l < whole_lanes; ++l) rest[l] = rows[l] + whole_count;
  rows_to_tile(rest, whole_lanes, count - whole_count, tile + whole_count * kLanes);
  rows_to_tile(rows + whole_lanes, lanes - whole_lanes, count, tile + whole_lanes);
}

template <int64_t kBytes, typename T, typename S>
HV_INLINE void tile_to_rows_vectors(const T* tile, int64_t lanes, int64_t count, S* const* rows) {
  if constexpr (!std::is_same_v<T, S>) {
    tile_to_rows(tile, lanes, count, rows);
  } else {
    const auto [whole_count, whole_lanes] =
        transpose_squares<false, kBytes>(rows, lanes, count, tile);
    T* rest[kLanes];
    for (int64_t l = 0; l < whole_lanes; ++l) rest[l] = rows[l] + whole_count;
    tile_to_rows(tile + whole_count * kLanes, whole_lanes, count - whole_count, rest);
    tile_to_rows(tile + whole_lanes, lanes - whole_lanes, count, rows + whole_lanes);
  }
}

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

  // Channels d0 .. d0 + width - 1 of batch b, which read the same B and C rows.
  LaneBlock<T> load_block(int64_t b, int64_t d0, int64_t width,
                          std::vector<T> (&buffers)[kLanes][3]) const {
    LaneBlock<T> block;
    block.width = width;
    for (int64_t lane = 0; lane < kLanes; ++lane) {
      block.lanes[lane] = lane < width ? load_channel(b, d0 + lane, buffers[lane]) : block.lanes[0];
    }
    return block;
  }
};

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

template <typename scalar_t>
void forward_kernel(const ScanInputs& in, at::Tensor& out, at::Tensor& last_state,
                    at::Tensor& checkpoints) {
  using T = at::opmath_type<scalar_t>;
  const ScanView<scalar_t, T> view(in);
  const int64_t N = in.state;
  const int64_t chunks = scan_num_chunks(in.length);
  T* states = last_state.data_ptr<T>();
  T* checkpoint_base = checkpoints.data_ptr<T>();
  const T* initial = in.initial_state ? in.initial_state->data_ptr<T>() : nullptr;
  at::parallel_for(0, in.batch * in.dim, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> rows[3], out_buffer, products(N);
    FactorRows<T> factors;
    for (int64_t channel = begin; channel < end; ++channel) {
      const int64_t b = channel / in.dim, d = channel % in.dim;
      const Channel<T> c = view.load_channel(b, d, rows);
      T* state = states + channel * N;
      if (initial) {
        std::copy_n(initial + channel * N, N, state);
      } else {
        std::fill_n(state, N, T(0));
      }
      scalar_t* out_row = out.data_ptr<scalar_t>() + channel * in.length;
      T* computed = output_row<T>(out_row, in.length, out_buffer);
      run_forward_channel(c, factors.get(in.length, c.z != nullptr, false), state, computed,
                          checkpoint_base + channel * chunks * N,
                          products.data());
      narrow_row(computed, out_row, in.length);
    }
  });
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
        run_forward_lanes(view.load_block(b, d0, width, rows), storage, state.data(),
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

GradBuffers empty_grads(const ScanInputs& in, int64_t blocks) {
  const auto acc = in.u.options().dtype(in.acc_dtype());
  const auto projection = [&](bool variable, int64_t groups) {
    return variable ? at::zeros({in.batch, blocks, groups, in.length, in.state}, acc)
                    : at::zeros({in.batch, in.dim, in.state}, acc);
  };
  GradBuffers g;
  g.du = at::empty_like(in.u);
  g.ddelta = at::empty_like(in.u);
  g.dz = in.z ? at::empty_like(in.u) : at::empty({0}, in.u.options());
  g.dA = at::zeros({in.batch, in.dim, in.state}, acc);
  g.dB = projection(in.B_variable(), in.groups_B);
  g.dC = projection(in.C_variable(), in.groups_C);
  g.dD = at::zeros({in.batch, in.dim}, acc);
  g.d_delta_bias = at::zeros({in.batch, in.dim}, acc);
  g.d_initial_state = at::empty({in.batch, in.dim, in.state}, acc);
  return g;
}

// Channel blocks per batch: fewer when B or C has many groups, so that the private dB/dC
// buffers (blocks x G rows of L x N each) stay near the size of B and C themselves.
int64_t channel_blocks(const ScanInputs& in) {
  const int64_t groups = std::max<int64_t>({1, in.groups_B, in.groups_C});
  return std::clamp<int64_t>(kMaxChannelBlocks / groups, 1, std::max<int64_t>(in.dim, 1));
}

// dB or dC from its buffer: fixed (dim, N) summed over the batch, or variable (batch, G, N, L)
// summed over the blocks, in the dtype of the input and the layout of projection_rows.
at::Tensor reduce_projection_grad(const at::Tensor& buffer, bool variable, at::ScalarType dtype) {
  if (!variable) return buffer.sum(0);
  return buffer.sum(1).transpose(-1, -2).to(dtype);
}

// A backward task is (batch, block of channels); it alone writes its rows of the dB/dC buffers.
// Its channels: a share of dim, in whole kLanes slots on the lane path.
std::pair<int64_t, int64_t> task_channels(const ScanInputs& in, int64_t blocks, int64_t block) {
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

template <typename scalar_t>
void backward_kernel(const ScanInputs& in, const at::Tensor& dout,
                     const std::optional<at::Tensor>& dlast_state, const at::Tensor& checkpoints,
                     GradBuffers& g, int64_t blocks) {
  using T = at::opmath_type<scalar_t>;
  const ScanView<scalar_t, T> view(in);
  const int64_t N = in.state, L = in.length;
  const int64_t chunks = scan_num_chunks(L);
  at::parallel_for(0, in.batch * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> rows[3], dout_buffer, du_buffer, ddelta_buffer, dz_buffer;
    std::vector<T> scratch(backward_scratch_size(N));
    FactorRows<T> factors;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, block = task % blocks;
      const auto [first, last] = task_channels(in, blocks, block);
      for (int64_t d = first; d < last; ++d) {
        const int64_t channel = b * in.dim + d;
        const int64_t offset = channel * L;
        const Channel<T> c = view.load_channel(b, d, rows);
        const T* dout_row = widen(dout.data_ptr<scalar_t>() + offset, L, dout_buffer);
        ChannelGrads<T> grads{
            output_row<T>(g.du.data_ptr<scalar_t>() + offset, L, du_buffer),
            output_row<T>(g.ddelta.data_ptr<scalar_t>() + offset, L, ddelta_buffer),
            in.z ? output_row<T>(g.dz.data_ptr<scalar_t>() + offset, L, dz_buffer) : nullptr,
            g.dA.data_ptr<T>() + channel * N,
            projection_grad<T>(g.dB, in.groups_B, in, blocks, b, block, d),
            projection_grad<T>(g.dC, in.groups_C, in, blocks, b, block, d)};
        T* adjoint = g.d_initial_state.data_ptr<T>() + channel * N;
        if (dlast_state) {
          std::copy_n(dlast_state->data_ptr<T>() + channel * N, N, adjoint);
        } else {
          std::fill_n(adjoint, N, T(0));
        }
        run_backward_channel(c, factors.get(L, c.z != nullptr, true), dout_row,
                             checkpoints.data_ptr<T>() + channel * chunks * N, adjoint,
                             scratch.data(), grads);
        narrow_row(grads.du, g.du.data_ptr<scalar_t>() + offset, L);
        narrow_row(grads.ddelta, g.ddelta.data_ptr<scalar_t>() + offset, L);
        if (in.z) narrow_row(grads.dz, g.dz.data_ptr<scalar_t>() + offset, L);
        g.dD.data_ptr<T>()[channel] = grads.d_skip;
        g.d_delta_bias.data_ptr<T>()[channel] = grads.d_delta_bias;
      }
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
        run_backward_lanes(view.load_block(b, d0, width, rows), storage, checkpoint_tile.data(),
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

ForwardResult forward_cpu(const ScanInputs& in) {
  auto [out, last_state, checkpoints] = empty_forward_outputs(in);
  if (in.length == 0) copy_or_zero(last_state, in.initial_state);
  if (in.u.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.u.scalar_type(),
                                    "selective_scan_fwd_cpu",
                                    [&] {
                                      if (uses_lanes(in)) {
                                        forward_lanes_kernel<scalar_t>(in, out, last_state,
                                                                       checkpoints);
                                      } else {
                                        forward_kernel<scalar_t>(in, out, last_state, checkpoints);
                                      }
                                    });
  }
  return {out, last_state, checkpoints};
}

BackwardResult backward_cpu(const ScanInputs& in, const at::Tensor& dout,
                            const std::optional<at::Tensor>& dlast_state,
                            const at::Tensor& checkpoints) {
  const int64_t blocks = channel_blocks(in);
  GradBuffers g = empty_grads(in, blocks);
  if (in.length == 0) copy_or_zero(g.d_initial_state, dlast_state);
  if (in.u.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.u.scalar_type(),
                                    "selective_scan_bwd_cpu", [&] {
                                      if (uses_lanes(in)) {
                                        backward_lanes_kernel<scalar_t>(in, dout, dlast_state,
                                                                        checkpoints, g, blocks);
                                      } else {
                                        backward_kernel<scalar_t>(in, dout, dlast_state,
                                                                  checkpoints, g, blocks);
                                      }
                                    });
  }
  return {g.du,
          g.ddelta,
          g.dA.sum(0),
          reduce_projection_grad(g.dB, in.B_variable(), in.B.scalar_type()),
          reduce_projection_grad(g.dC, in.C_variable(), in.C.scalar_type()),
          g.dD.sum(0),
          g.dz,
          g.d_delta_bias.sum(0),
          g.d_initial_state};
}

constexpr Kernels kCpuKernels{&forward_cpu, &backward_cpu};

}  // namespace

TORCH_LIBRARY_IMPL(hvision, CPU, m) {
  m.impl("selective_scan_fwd", &forward_op<kCpuKernels>);
  m.impl("selective_scan_bwd", &backward_op<kCpuKernels>);
}

}  // namespace hvision::selective_scan
