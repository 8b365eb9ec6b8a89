// selective_scan CUDA kernels. The math of a step is selective_scan_step.h's, shared with the CPU
// kernels.
//
// A team of S = min(32, next_pow2(N)) lanes scans one channel (b, d): lane l keeps states l,
// l + S, ... (P slots, a template parameter) in registers, and the per-step sums over the states
// (y, dδ, du) are butterfly shuffles inside the team. A block scans up to kMaxChannels channels
// of one batch that share their B group and their C group, so that a variable dB/dC is summed
// over the block's channels before it reaches global memory. Time runs in chunks of kScanChunk
// steps: u, delta, z and dout are staged through shared memory one chunk at a time (loads
// coalesced along L, widened once to the accumulation type T), and the outputs leave the same
// way, written into the slots of the inputs they replace.
//
// The backward pass walks the chunks in reverse scan order: it recomputes a chunk's states from
// the checkpoint saved by the forward pass (in shared memory when they fit, else in local
// memory), then walks the chunk backwards with the adjoint in registers.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <numeric>
#include <type_traits>

#include "common/cuda_utils.cuh"
#include "selective_scan/selective_scan.h"
#include "selective_scan/selective_scan_step.h"

namespace hvision::selective_scan {
namespace {

constexpr int kChunk = static_cast<int>(kScanChunk);
// Staged rows are one step longer than a chunk so that the teams of a warp, each reading step k
// of its own row, hit different banks.
constexpr int kTileStride = kChunk + 1;
constexpr int kMaxThreads = 128;
constexpr int kMaxChannels = 8;
// Dynamic shared memory per block stays within the default limit: no opt-in attribute needed.
constexpr int64_t kSharedLimit = 48 * 1024;

// ---------------------------------------------------------------------------------------------
// Work decomposition
// ---------------------------------------------------------------------------------------------

// How channels map to blocks. The channels are cut into aligned runs of `run` channels that
// share their B group and their C group, each run into tiles of at most `channels` channels, one
// block per tile. Blocks are numbered batch-major, then in channel order.
struct Tiling {
  int team = 1;      // lanes per channel: a power of two, at most 32
  int per_lane = 1;  // state slots per lane (P): 1, 2, 4 or 8
  int channels = 1;  // channels per block
  int threads = gpu::kWarpSize;  // channels * team rounded up to whole warps
  int64_t run = 1;
  int64_t tiles_per_run = 1;
  int64_t tiles_per_batch = 0;
};

// The channels of one block: `count` channels of batch `batch` from channel `first`.
struct BlockChannels {
  int64_t batch, first;
  int count;
};

HV_DEVICE BlockChannels block_channels(const Tiling& tiling) {
  const int64_t block = blockIdx.x;
  const int64_t tile = block % tiling.tiles_per_batch;
  const int64_t sub = tile % tiling.tiles_per_run;
  const int64_t first = tile / tiling.tiles_per_run * tiling.run + sub * tiling.channels;
  const int64_t count = std::min<int64_t>(tiling.channels, tiling.run - sub * tiling.channels);
  return {block / tiling.tiles_per_batch, first, static_cast<int>(count)};
}

// Chunk `index` of the scan: `steps` steps from step `first` in scan order.
struct Chunk {
  int64_t index, first, length;
  int steps;
  bool reverse;

  HV_DEVICE int64_t time(int k) const {
    const int64_t step = first + k;
    return reverse ? length - 1 - step : step;
  }
};

HV_DEVICE Chunk chunk_at(int64_t index, int64_t length, bool reverse) {
  const int64_t first = index * kScanChunk;
  const int64_t left = length - first;
  return {index, first, length, static_cast<int>(left < kScanChunk ? left : kScanChunk), reverse};
}

// ---------------------------------------------------------------------------------------------
// Kernel arguments
// ---------------------------------------------------------------------------------------------

template <typename scalar_t>
struct ScanArgs {
  using T = at::opmath_type<scalar_t>;
  const scalar_t* u;      // (batch, dim, L)
  const scalar_t* delta;  // (batch, dim, L), before bias and softplus
  const scalar_t* z;      // (batch, dim, L) or nullptr
  const T* A;             // (dim, N)
  const T* D;             // (dim,) or nullptr (0)
  const T* delta_bias;    // (dim,) or nullptr (0)
  const T* B;             // fixed (dim, N) or variable (batch, G, L, N)
  const T* C;
  int64_t dim, length, state, chunks, groups_B, groups_C;
  Tiling tiling;
  bool softplus, reverse;
};

template <typename scalar_t>
struct ForwardArgs {
  using T = at::opmath_type<scalar_t>;
  ScanArgs<scalar_t> scan;
  const T* initial_state;  // (batch, dim, N) or nullptr (zeros)
  scalar_t* out;
  T* last_state;
  T* checkpoints;  // (batch, dim, chunks, N)
};

template <typename scalar_t>
struct BackwardArgs {
  using T = at::opmath_type<scalar_t>;
  ScanArgs<scalar_t> scan;
  const scalar_t* dout;
  const T* dlast_state;  // (batch, dim, N) or nullptr (zeros)
  const T* checkpoints;
  scalar_t* du;
  scalar_t* ddelta;
  scalar_t* dz;  // nullptr without z
  T* dA;         // (batch, dim, N) partials
  T* dB;         // see projection_grad_buffer
  T* dC;
  T* dD;           // (batch, dim) partials
  T* ddelta_bias;  // (batch, dim) partials
  T* dinitial_state;
  bool slabs;  // variable dB/dC: each block stores its own slab instead of adding atomically
};

// ---------------------------------------------------------------------------------------------
// Per-thread view of a channel
// ---------------------------------------------------------------------------------------------

// The block's staged rows of one chunk in shared memory, kTileStride apart.
template <typename T>
struct Tiles {
  T* u;
  T* delta;
  T* z;
  T* dout;  // backward only
};

template <typename T>
HV_DEVICE Tiles<T> carve_tiles(T* shared, int channels, bool with_dout) {
  const int size = channels * kTileStride;
  return {shared, shared + size, shared + 2 * size, with_dout ? shared + 3 * size : nullptr};
}

// One thread's share of a channel: its team (= the channel's row in the tiles), its lane and the
// states it owns. Padding teams (a block with fewer channels than teams) and padding slots (N
// not a multiple of S) own nothing: they read zeros, write nothing and add zeros to the sums,
// yet run every shuffle and barrier with the others.
template <typename T, int P>
struct Lane {
  int lane, team_size, row;
  bool active;
  int64_t channel;  // b * dim + d
  int64_t state;    // N
  T a[P];
  T skip_d, delta_bias;
  const T* B;  // the channel's B: row d of a fixed one, its group's (L, N) rows for a variable one
  const T* C;
  int64_t B_step, C_step;  // between time steps: N for a variable projection, 0 for a fixed one

  HV_DEVICE int64_t n(int p) const { return lane + static_cast<int64_t>(p) * team_size; }
  HV_DEVICE bool owns(int p) const { return active && n(p) < state; }

  HV_DEVICE T read(const T* tile, int k) const {
    return active ? tile[row * kTileStride + k] : T(0);
  }
  // Lane 0 writes the channel's value; call after __syncwarp when it replaces an input.
  HV_DEVICE void write(T* tile, int k, T value) const {
    if (active && lane == 0) tile[row * kTileStride + k] = value;
  }

  // The owned states of row `index` of an (rows, N) array (zeros from a null one).
  HV_DEVICE void load_row(const T* base, int64_t index, T (&values)[P]) const {
#pragma unroll
    for (int p = 0; p < P; ++p) values[p] = base && owns(p) ? base[index * state + n(p)] : T(0);
  }
  HV_DEVICE void store_row(T* base, int64_t index, const T (&values)[P]) const {
#pragma unroll
    for (int p = 0; p < P; ++p) {
      if (owns(p)) base[index * state + n(p)] = values[p];
    }
  }
  // B_t or C_t of the owned states.
  HV_DEVICE void load_projection(const T* base, int64_t step, int64_t t, T (&values)[P]) const {
#pragma unroll
    for (int p = 0; p < P; ++p) values[p] = owns(p) ? base[t * step + n(p)] : T(0);
  }
};

template <typename T>
HV_DEVICE const T* projection_of(const T* data, int64_t groups, int64_t b, int64_t d, int64_t dim,
                                 int64_t length, int64_t state) {
  if (groups == 0) return data + d * state;
  return data + (b * groups + d / (dim / groups)) * length * state;
}

template <typename T, int P, typename scalar_t>
HV_DEVICE Lane<T, P> make_lane(const ScanArgs<scalar_t>& s, const BlockChannels& blk) {
  Lane<T, P> c;
  const int thread = threadIdx.x;
  c.team_size = s.tiling.team;
  c.row = thread / c.team_size;
  c.lane = thread % c.team_size;
  c.active = c.row < blk.count;
  c.state = s.state;
  const int64_t d = blk.first + c.row;
  c.channel = blk.batch * s.dim + d;
  c.skip_d = c.active && s.D ? s.D[d] : T(0);
  c.delta_bias = c.active && s.delta_bias ? s.delta_bias[d] : T(0);
  c.B = c.active ? projection_of(s.B, s.groups_B, blk.batch, d, s.dim, s.length, s.state) : nullptr;
  c.C = c.active ? projection_of(s.C, s.groups_C, blk.batch, d, s.dim, s.length, s.state) : nullptr;
  c.B_step = s.groups_B ? s.state : 0;
  c.C_step = s.groups_C ? s.state : 0;
#pragma unroll
  for (int p = 0; p < P; ++p) c.a[p] = c.owns(p) ? s.A[d * s.state + c.n(p)] : T(0);
  return c;
}

// ---------------------------------------------------------------------------------------------
// Shared device steps
// ---------------------------------------------------------------------------------------------

// Calls f(tile offset, global offset) for each (channel, step) of the block's chunk: consecutive
// threads take consecutive steps of a row, so the global accesses are coalesced along L.
template <typename F>
HV_DEVICE void for_each_tile_element(const BlockChannels& blk, const Chunk& chunk, int64_t dim,
                                     F&& f) {
  const int64_t first_row = (blk.batch * dim + blk.first) * chunk.length;
  for (int i = threadIdx.x; i < blk.count * kChunk; i += blockDim.x) {
    const int row = i / kChunk, k = i % kChunk;
    if (k < chunk.steps) f(row * kTileStride + k, first_row + row * chunk.length + chunk.time(k));
  }
}

template <typename T, typename scalar_t>
HV_DEVICE void load_tile(T* tile, const scalar_t* src, const BlockChannels& blk,
                         const Chunk& chunk, int64_t dim) {
  for_each_tile_element(blk, chunk, dim,
                        [&](int i, int64_t offset) { tile[i] = static_cast<T>(src[offset]); });
}

template <typename T, typename scalar_t>
HV_DEVICE void store_tile(const T* tile, scalar_t* dst, const BlockChannels& blk,
                          const Chunk& chunk, int64_t dim) {
  for_each_tile_element(blk, chunk, dim, [&](int i, int64_t offset) {
    dst[offset] = static_cast<scalar_t>(tile[i]);
  });
}

// What every state of a channel shares in step k of the chunk.
template <typename T>
struct StepInputs {
  T raw_delta, delta, u;
};

template <typename T, int P>
HV_DEVICE StepInputs<T> step_inputs(const Lane<T, P>& c, const Tiles<T>& tiles, int k,
                                    bool softplus) {
  const T raw = c.read(tiles.delta, k) + c.delta_bias;
  return {raw, scan_delta(raw, softplus), c.read(tiles.u, k)};
}

// silu(z_k) and its derivative; {1, 0} without z.
template <typename T, int P>
HV_DEVICE Gate<T> step_gate(const Lane<T, P>& c, const Tiles<T>& tiles, int k, bool has_z) {
  return has_z ? scan_gate(c.read(tiles.z, k)) : Gate<T>{T(1), T(0)};
}

// h <- exp(δA) h + B_t δu for the owned states: a step of the forward pass and of the recompute.
template <typename T, int P>
HV_DEVICE void advance_states(const Lane<T, P>& c, int64_t t, const StepInputs<T>& step,
                              T (&h)[P]) {
  T B[P];
  c.load_projection(c.B, c.B_step, t, B);
  const T delta_u = step.delta * step.u;
#pragma unroll
  for (int p = 0; p < P; ++p) {
    if (c.owns(p)) h[p] = scan_state_update(h[p], scan_decay(step.delta, c.a[p]), B[p], delta_u);
  }
}

// y = Σ_n C_t[n] h[n] over the channel (slots not owned hold zeros in both).
template <typename T, int P>
HV_DEVICE T team_dot(const Lane<T, P>& c, const T (&C)[P], const T (&h)[P]) {
  T partial = 0;
#pragma unroll
  for (int p = 0; p < P; ++p) partial += C[p] * h[p];
  return gpu::group_sum(partial, c.team_size);
}

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------

template <typename T>
constexpr int64_t forward_shared_bytes(int channels) {
  return 3 * channels * kTileStride * static_cast<int64_t>(sizeof(T));
}

template <typename scalar_t, int P>
__global__ void __launch_bounds__(kMaxThreads) forward_kernel(const ForwardArgs<scalar_t> args) {
  using T = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  const ScanArgs<scalar_t>& s = args.scan;
  const bool has_z = s.z != nullptr;
  const BlockChannels blk = block_channels(s.tiling);
  const Lane<T, P> c = make_lane<T, P>(s, blk);
  const Tiles<T> tiles = carve_tiles(reinterpret_cast<T*>(shared_bytes), s.tiling.channels, false);

  T h[P];
  c.load_row(args.initial_state, c.channel, h);
  for (int64_t index = 0; index < s.chunks; ++index) {
    const Chunk chunk = chunk_at(index, s.length, s.reverse);
    __syncthreads();  // the previous chunk's outputs have left the tiles
    load_tile(tiles.u, s.u, blk, chunk, s.dim);
    load_tile(tiles.delta, s.delta, blk, chunk, s.dim);
    if (has_z) load_tile(tiles.z, s.z, blk, chunk, s.dim);
    c.store_row(args.checkpoints, c.channel * s.chunks + index, h);
    __syncthreads();
    for (int k = 0; k < chunk.steps; ++k) {
      const int64_t t = chunk.time(k);
      const StepInputs<T> step = step_inputs(c, tiles, k, s.softplus);
      advance_states(c, t, step, h);
      T C[P];
      c.load_projection(c.C, c.C_step, t, C);
      const T out = scan_output(team_dot(c, C, h), step.u, c.skip_d,
                                step_gate(c, tiles, k, has_z).value);
      __syncwarp();  // the whole team has read u[k] before lane 0 replaces it with out[k]
      c.write(tiles.u, k, out);
    }
    __syncthreads();
    store_tile(tiles.u, args.out, blk, chunk, s.dim);
  }
  c.store_row(args.last_state, c.channel, h);
}

// ---------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------

// Shared memory of the backward kernel, in elements of T: the four staged tiles; the buffer that
// collects `kFlushSteps` steps of variable dB/dC contributions, [2][steps][P][threads]; and, when
// the whole fits in kSharedLimit for the largest block, the chunk's state history.
template <typename T, int P>
struct BackwardLayout {
  static constexpr int64_t tiles(int channels) { return 4 * channels * kTileStride; }
  static constexpr int64_t flush(int threads, int steps) { return 2 * steps * P * threads; }
  static constexpr int64_t history(int threads) { return (kChunk + 1) * P * threads; }
  static constexpr bool fits(int64_t elements) {
    return elements * static_cast<int64_t>(sizeof(T)) <= kSharedLimit;
  }

  static constexpr bool kSharedHistory =
      fits(tiles(kMaxChannels) + flush(kMaxThreads, 1) + history(kMaxThreads));

  // The most steps (a power of two dividing kChunk, at most 16) between flushes that still fit:
  // fewer block-wide barriers.
  static constexpr int flush_steps() {
    int steps = 16;
    while (steps > 1 && !fits(tiles(kMaxChannels) + flush(kMaxThreads, steps) +
                              (kSharedHistory ? history(kMaxThreads) : 0))) {
      steps /= 2;
    }
    return steps;
  }
  static constexpr int kFlushSteps = flush_steps();

  static constexpr int64_t bytes(int channels, int threads) {
    const int64_t elements = tiles(channels) + flush(threads, kFlushSteps) +
                             (kSharedHistory ? history(threads) : 0);
    return elements * static_cast<int64_t>(sizeof(T));
  }
};

// The states entering each step of a chunk (k = 0 .. steps), slot (k, p) at
// data[(k P + p) stride]: in shared memory with stride = block size (a column per thread, so no
// bank conflicts), or in the thread's local memory with stride 1.
template <typename T, int P>
struct History {
  T* data;
  int stride;

  HV_DEVICE void store(int k, const T (&h)[P]) const {
#pragma unroll
    for (int p = 0; p < P; ++p) data[(k * P + p) * stride] = h[p];
  }
  HV_DEVICE void load(int k, T (&h)[P]) const {
#pragma unroll
    for (int p = 0; p < P; ++p) h[p] = data[(k * P + p) * stride];
  }
};

// Variable dB (which = 0) and dC (which = 1): every thread's contributions of up to `Steps`
// steps wait in shared memory, [2][Steps][P][threads], until a flush adds their sums over the
// block's channels to `rows[which]`, the (L, N) rows of the block's own slab (deterministic) or of
// its (batch, group) (atomics). rows[which] is nullptr for a fixed projection.
template <typename T, int P, int Steps>
struct ProjectionGradFlush {
  T* buffer;
  T* rows[2];
  bool atomic;

  HV_DEVICE T& at(int which, int j, int p, int thread) const {
    return buffer[((which * Steps + j) * P + p) * static_cast<int>(blockDim.x) + thread];
  }

  // Block-wide: steps k0 .. k0 + Steps - 1 of the chunk, summed in channel order.
  HV_DEVICE void flush(const BlockChannels& blk, const Chunk& chunk, int k0, int team_size,
                       int64_t state) const {
    __syncthreads();  // every team's contributions are in the buffer
    const int states = static_cast<int>(state);
    const int count = std::min(Steps, chunk.steps - k0) * states;
    for (int which = 0; which < 2; ++which) {
      if (!rows[which]) continue;
      for (int i = threadIdx.x; i < count; i += blockDim.x) {
        const int j = i / states, n = i % states;
        T sum = 0;
        for (int team = 0; team < blk.count; ++team) {
          sum += at(which, j, n / team_size, team * team_size + n % team_size);
        }
        T* target = rows[which] + chunk.time(k0 + j) * state + n;
        if (atomic) {
          atomicAdd(target, sum);
        } else {
          *target = sum;
        }
      }
    }
    __syncthreads();  // the buffer is free for the next steps
  }
};

// A lane's sums over every step of its channel.
template <typename T, int P>
struct LaneGrads {
  T dA[P];
  T dB[P], dC[P];  // fixed projections only
  T d_skip, d_delta_bias;
};

// The (L, N) rows a block adds its variable dB or dC into: its own slab (deterministic), or its
// (batch, group)'s rows (atomics). nullptr for a fixed projection.
template <typename T, typename scalar_t>
HV_DEVICE T* projection_grad_rows(T* buffer, int64_t groups, bool slabs, const BlockChannels& blk,
                                  const ScanArgs<scalar_t>& s) {
  if (groups == 0) return nullptr;
  const int64_t row = slabs ? static_cast<int64_t>(blockIdx.x)
                            : blk.batch * groups + blk.first / (s.dim / groups);
  return buffer + row * s.length * s.state;
}

// Recomputes the states of the chunk from its checkpoint into `history`.
template <typename T, int P, typename scalar_t>
HV_DEVICE void recompute_chunk(const Lane<T, P>& c, const ScanArgs<scalar_t>& s,
                               const T* checkpoints, const Tiles<T>& tiles, const Chunk& chunk,
                               const History<T, P>& history) {
  T h[P];
  c.load_row(checkpoints, c.channel * s.chunks + chunk.index, h);
  history.store(0, h);
  for (int k = 0; k < chunk.steps; ++k) {
    advance_states(c, chunk.time(k), step_inputs(c, tiles, k, s.softplus), h);
    history.store(k + 1, h);
  }
}

// Step k of the chunk, backwards: turns the adjoint dL/dh_t into dL/dh_{t-1} and `h` (the state
// after the step) into the state before it, adds to the lane's sums, puts the variable dB/dC
// contributions in `var_grads` and du, dδ, dz into the tiles.
template <typename T, int P, int Steps, typename scalar_t>
HV_DEVICE void backward_step(const Lane<T, P>& c, const ScanArgs<scalar_t>& s,
                             const Tiles<T>& tiles, const Chunk& chunk, int k,
                             const History<T, P>& history,
                             const ProjectionGradFlush<T, P, Steps>& var_grads, T (&h)[P],
                             T (&adjoint)[P], LaneGrads<T, P>& g) {
  const bool has_z = s.z != nullptr;
  const int64_t t = chunk.time(k);
  const StepInputs<T> step = step_inputs(c, tiles, k, s.softplus);
  T B[P], C[P], h_prev[P];
  c.load_projection(c.B, c.B_step, t, B);
  c.load_projection(c.C, c.C_step, t, C);
  history.load(k, h_prev);

  T dy, dz;
  scan_output_backward(c.read(tiles.dout, k), has_z ? team_dot(c, C, h) : T(0), step.u,
                       c.skip_d, step_gate(c, tiles, k, has_z), dy, dz);
  g.d_skip += dy * step.u;

  T d_delta = 0, d_u = 0;
  const int j = k % Steps;
  const int thread = threadIdx.x;
#pragma unroll
  for (int p = 0; p < P; ++p) {
    if (!c.owns(p)) continue;
    const T dC = dy * h[p];
    adjoint[p] += dy * C[p];
    const T dB = scan_state_backward(adjoint[p], h_prev[p], scan_decay(step.delta, c.a[p]),
                                     step.delta, c.a[p], B[p], step.u, d_delta, d_u, g.dA[p]);
    h[p] = h_prev[p];
    if (var_grads.rows[0]) {
      var_grads.at(0, j, p, thread) = dB;
    } else {
      g.dB[p] += dB;
    }
    if (var_grads.rows[1]) {
      var_grads.at(1, j, p, thread) = dC;
    } else {
      g.dC[p] += dC;
    }
  }
  d_delta = gpu::group_sum(d_delta, c.team_size);
  d_u = dy * c.skip_d + gpu::group_sum(d_u, c.team_size);
  const T ddelta = d_delta * scan_delta_grad(step.raw_delta, s.softplus);
  g.d_delta_bias += ddelta;

  __syncwarp();  // the whole team has read step k's inputs before lane 0 replaces them
  c.write(tiles.u, k, d_u);
  c.write(tiles.delta, k, ddelta);
  if (has_z) c.write(tiles.z, k, dz);
}

template <typename scalar_t, int P>
__global__ void __launch_bounds__(kMaxThreads) backward_kernel(const BackwardArgs<scalar_t> args) {
  using T = at::opmath_type<scalar_t>;
  using Layout = BackwardLayout<T, P>;
  constexpr int kSteps = Layout::kFlushSteps;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  const ScanArgs<scalar_t>& s = args.scan;
  const bool has_z = s.z != nullptr;
  const BlockChannels blk = block_channels(s.tiling);
  const Lane<T, P> c = make_lane<T, P>(s, blk);
  T* shared = reinterpret_cast<T*>(shared_bytes);
  const Tiles<T> tiles = carve_tiles(shared, s.tiling.channels, true);
  const ProjectionGradFlush<T, P, kSteps> var_grads{
      shared + Layout::tiles(s.tiling.channels),
      {projection_grad_rows(args.dB, s.groups_B, args.slabs, blk, s),
       projection_grad_rows(args.dC, s.groups_C, args.slabs, blk, s)},
      !args.slabs};
  T local_history[Layout::kSharedHistory ? 1 : (kChunk + 1) * P];
  const History<T, P> history =
      Layout::kSharedHistory
          ? History<T, P>{var_grads.buffer + Layout::flush(blockDim.x, kSteps) + threadIdx.x,
                          static_cast<int>(blockDim.x)}
          : History<T, P>{local_history, 1};

  T adjoint[P];
  c.load_row(args.dlast_state, c.channel, adjoint);
  LaneGrads<T, P> g{};
  for (int64_t index = s.chunks - 1; index >= 0; --index) {
    const Chunk chunk = chunk_at(index, s.length, s.reverse);
    __syncthreads();  // the previous chunk's gradients have left the tiles
    load_tile(tiles.u, s.u, blk, chunk, s.dim);
    load_tile(tiles.delta, s.delta, blk, chunk, s.dim);
    load_tile(tiles.dout, args.dout, blk, chunk, s.dim);
    if (has_z) load_tile(tiles.z, s.z, blk, chunk, s.dim);
    __syncthreads();
    recompute_chunk(c, s, args.checkpoints, tiles, chunk, history);
    T h[P];
    history.load(chunk.steps, h);
    for (int k = chunk.steps - 1; k >= 0; --k) {
      backward_step(c, s, tiles, chunk, k, history, var_grads, h, adjoint, g);
      if ((s.groups_B || s.groups_C) && k % kSteps == 0) {
        var_grads.flush(blk, chunk, k, c.team_size, s.state);
      }
    }
    __syncthreads();  // every team has written its gradients into the tiles
    store_tile(tiles.u, args.du, blk, chunk, s.dim);
    store_tile(tiles.delta, args.ddelta, blk, chunk, s.dim);
    if (has_z) store_tile(tiles.z, args.dz, blk, chunk, s.dim);
  }

  c.store_row(args.dA, c.channel, g.dA);
  if (!var_grads.rows[0]) c.store_row(args.dB, c.channel, g.dB);
  if (!var_grads.rows[1]) c.store_row(args.dC, c.channel, g.dC);
  c.store_row(args.dinitial_state, c.channel, adjoint);
  if (c.active && c.lane == 0) {
    args.dD[c.channel] = g.d_skip;
    args.ddelta_bias[c.channel] = g.d_delta_bias;
  }
}

// ---------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------

int64_t next_pow2(int64_t n) {
  int64_t power = 1;
  while (power < n) power *= 2;
  return power;
}

Tiling make_tiling(const ScanInputs& in) {
  Tiling t;
  t.team = static_cast<int>(std::min<int64_t>(gpu::kWarpSize, next_pow2(in.state)));
  t.per_lane = static_cast<int>(next_pow2((in.state + t.team - 1) / t.team));
  const auto channels_per_group = [&](int64_t groups) { return groups ? in.dim / groups : in.dim; };
  t.run = std::gcd(channels_per_group(in.groups_B), channels_per_group(in.groups_C));
  t.channels = static_cast<int>(std::min<int64_t>({kMaxChannels, kMaxThreads / t.team, t.run}));
  t.threads = (t.channels * t.team + gpu::kWarpSize - 1) / gpu::kWarpSize * gpu::kWarpSize;
  t.tiles_per_run = (t.run + t.channels - 1) / t.channels;
  t.tiles_per_batch = in.dim / t.run * t.tiles_per_run;
  TORCH_CHECK(in.batch * t.tiles_per_batch <= INT_MAX, "selective_scan: batch * dim = ",
              in.batch * in.dim, " channels need more CUDA blocks than one launch allows");
  return t;
}

// Calls f(std::integral_constant<int, P>{}) for the tiling's state slots per lane.
template <typename F>
void with_per_lane(int per_lane, F&& f) {
  switch (per_lane) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 8: return f(std::integral_constant<int, 8>{});
  }
  TORCH_INTERNAL_ASSERT(false, "selective_scan: unexpected state slots per lane ", per_lane);
}

template <typename T>
const T* optional_ptr(const std::optional<at::Tensor>& t) {
  return t ? t->const_data_ptr<T>() : nullptr;
}

template <typename scalar_t>
ScanArgs<scalar_t> scan_args(const ScanInputs& in, const at::Tensor& B, const at::Tensor& C,
                             const Tiling& tiling) {
  using T = at::opmath_type<scalar_t>;
  return {in.u.const_data_ptr<scalar_t>(),
          in.delta.const_data_ptr<scalar_t>(),
          optional_ptr<scalar_t>(in.z),
          in.A.const_data_ptr<T>(),
          optional_ptr<T>(in.D),
          optional_ptr<T>(in.delta_bias),
          B.const_data_ptr<T>(),
          C.const_data_ptr<T>(),
          in.dim,
          in.length,
          in.state,
          scan_num_chunks(in.length),
          in.groups_B,
          in.groups_C,
          tiling,
          in.softplus,
          in.reverse};
}

template <typename Args>
void launch(void (*kernel)(Args), const Tiling& tiling, int64_t batch, int64_t shared_bytes,
            const Args& args) {
  TORCH_INTERNAL_ASSERT(shared_bytes <= kSharedLimit);
  kernel<<<static_cast<unsigned>(batch * tiling.tiles_per_batch), tiling.threads, shared_bytes,
           at::cuda::getCurrentCUDAStream()>>>(args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int P>
void launch_forward(const ScanInputs& in, const at::Tensor& B, const at::Tensor& C,
                    const Tiling& tiling, ForwardResult& result) {
  using T = at::opmath_type<scalar_t>;
  auto& [out, last_state, checkpoints] = result;
  const ForwardArgs<scalar_t> args{
      scan_args<scalar_t>(in, B, C, tiling), optional_ptr<T>(in.initial_state),
      out.mutable_data_ptr<scalar_t>(), last_state.mutable_data_ptr<T>(),
      checkpoints.mutable_data_ptr<T>()};
  launch(forward_kernel<scalar_t, P>, tiling, in.batch, forward_shared_bytes<T>(tiling.channels),
         args);
}

// Gradients of one backward call in the accumulation type, before the reductions that give them
// the shapes of the inputs.
struct GradBuffers {
  at::Tensor du, ddelta, dz;       // like u (dz empty without z)
  at::Tensor dA;                   // (batch, dim, N) partials
  at::Tensor dB, dC;               // see projection_grad_buffer
  at::Tensor dD, d_delta_bias;     // (batch, dim) partials
  at::Tensor d_initial_state;      // (batch, dim, N)
};

// Where the kernel puts dB or dC. Fixed: (batch, dim, N) partials, summed over the batch.
// Variable, transposed to (L, N) rows: with `slabs` (deterministic algorithms), one slab per
// block, (batch, G, blocks per group, L, N), summed over the blocks of a group in order; else
// (batch, G, L, N) that the blocks add to atomically.
at::Tensor projection_grad_buffer(const ScanInputs& in, int64_t groups, const Tiling& tiling,
                                  bool slabs) {
  const auto acc = in.u.options().dtype(in.acc_dtype());
  if (groups == 0) return at::zeros({in.batch, in.dim, in.state}, acc);
  if (slabs) return at::empty({in.batch * tiling.tiles_per_batch, in.length, in.state}, acc);
  return at::zeros({in.batch, groups, in.length, in.state}, acc);
}

// dB or dC in the canonical layout of the input: fixed (dim, N), or variable (batch, G, N, L) in
// the input's dtype and the layout of projection_rows.
at::Tensor finish_projection_grad(const at::Tensor& buffer, const ScanInputs& in, int64_t groups,
                                  at::ScalarType dtype, bool slabs) {
  if (groups == 0) return buffer.sum(0);
  const at::Tensor summed =
      slabs ? buffer.view({in.batch, groups, -1, in.length, in.state}).sum(2) : buffer;
  return summed.transpose(-1, -2).to(dtype);
}

GradBuffers empty_grads(const ScanInputs& in, const Tiling& tiling, bool slabs) {
  const auto acc = in.u.options().dtype(in.acc_dtype());
  GradBuffers g;
  g.du = at::empty_like(in.u);
  g.ddelta = at::empty_like(in.u);
  g.dz = in.z ? at::empty_like(in.u) : at::empty({0}, in.u.options());
  g.dA = at::zeros({in.batch, in.dim, in.state}, acc);
  g.dB = projection_grad_buffer(in, in.groups_B, tiling, slabs);
  g.dC = projection_grad_buffer(in, in.groups_C, tiling, slabs);
  g.dD = at::zeros({in.batch, in.dim}, acc);
  g.d_delta_bias = at::zeros({in.batch, in.dim}, acc);
  g.d_initial_state = at::empty({in.batch, in.dim, in.state}, acc);
  return g;
}

template <typename scalar_t, int P>
void launch_backward(const ScanInputs& in, const at::Tensor& B, const at::Tensor& C,
                     const Tiling& tiling, bool slabs, const at::Tensor& dout,
                     const std::optional<at::Tensor>& dlast_state, const at::Tensor& checkpoints,
                     GradBuffers& g) {
  using T = at::opmath_type<scalar_t>;
  const BackwardArgs<scalar_t> args{scan_args<scalar_t>(in, B, C, tiling),
                                    dout.const_data_ptr<scalar_t>(),
                                    optional_ptr<T>(dlast_state),
                                    checkpoints.const_data_ptr<T>(),
                                    g.du.mutable_data_ptr<scalar_t>(),
                                    g.ddelta.mutable_data_ptr<scalar_t>(),
                                    in.z ? g.dz.mutable_data_ptr<scalar_t>() : nullptr,
                                    g.dA.mutable_data_ptr<T>(),
                                    g.dB.mutable_data_ptr<T>(),
                                    g.dC.mutable_data_ptr<T>(),
                                    g.dD.mutable_data_ptr<T>(),
                                    g.d_delta_bias.mutable_data_ptr<T>(),
                                    g.d_initial_state.mutable_data_ptr<T>(),
                                    slabs};
  launch(backward_kernel<scalar_t, P>, tiling, in.batch,
         BackwardLayout<T, P>::bytes(tiling.channels, tiling.threads), args);
}

ForwardResult forward_cuda(const ScanInputs& in) {
  const c10::cuda::CUDAGuard guard(in.u.device());
  ForwardResult result = empty_forward_outputs(in);
  if (in.length == 0) copy_or_zero(std::get<1>(result), in.initial_state);
  if (in.u.numel() > 0) {
    const Tiling tiling = make_tiling(in);
    const at::Tensor B = projection_rows(in.B, in.B_variable(), in.acc_dtype());
    const at::Tensor C = projection_rows(in.C, in.C_variable(), in.acc_dtype());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.u.scalar_type(),
                                    "selective_scan_fwd_cuda", [&] {
                                      with_per_lane(tiling.per_lane, [&](auto per_lane) {
                                        launch_forward<scalar_t, decltype(per_lane)::value>(
                                            in, B, C, tiling, result);
                                      });
                                    });
  }
  return result;
}

BackwardResult backward_cuda(const ScanInputs& in, const at::Tensor& dout,
                             const std::optional<at::Tensor>& dlast_state,
                             const at::Tensor& checkpoints) {
  const c10::cuda::CUDAGuard guard(in.u.device());
  const bool run = in.u.numel() > 0;
  const Tiling tiling = run ? make_tiling(in) : Tiling{};
  const bool slabs = run && at::globalContext().deterministicAlgorithms();
  GradBuffers g = empty_grads(in, tiling, slabs);
  if (in.length == 0) copy_or_zero(g.d_initial_state, dlast_state);
  if (run) {
    const at::Tensor B = projection_rows(in.B, in.B_variable(), in.acc_dtype());
    const at::Tensor C = projection_rows(in.C, in.C_variable(), in.acc_dtype());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.u.scalar_type(),
                                    "selective_scan_bwd_cuda", [&] {
                                      with_per_lane(tiling.per_lane, [&](auto per_lane) {
                                        launch_backward<scalar_t, decltype(per_lane)::value>(
                                            in, B, C, tiling, slabs, dout, dlast_state,
                                            checkpoints, g);
                                      });
                                    });
  }
  return {g.du,
          g.ddelta,
          g.dA.sum(0),
          finish_projection_grad(g.dB, in, in.groups_B, in.B.scalar_type(), slabs),
          finish_projection_grad(g.dC, in, in.groups_C, in.C.scalar_type(), slabs),
          g.dD.sum(0),
          g.dz,
          g.d_delta_bias.sum(0),
          g.d_initial_state};
}

constexpr Kernels kCudaKernels{&forward_cuda, &backward_cuda};

}  // namespace

TORCH_LIBRARY_IMPL(hvision, CUDA, m) {
  m.impl("selective_scan_fwd", &forward_op<kCudaKernels>);
  m.impl("selective_scan_bwd", &backward_op<kCudaKernels>);
}

}  // namespace hvision::selective_scan
