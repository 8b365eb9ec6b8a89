// sparse_attention CUDA kernels. The pattern's enumeration (segments, minor tiles, strided runs)
// is sparse_attention_step.h's and the online-softmax step common/step_math.h's, both shared
// with the CPU kernels.
//
// One block of 128 threads owns one major tile of kTile rows of one (batch, head): queries in
// the forward pass and for dq, keys for dk/dv (the pattern walked transposed), so every output
// row is written by exactly one block and results are deterministic. The block stages its major
// rows and each minor tile in shared memory (zero-padded to kTile rows and head_dim rounded up
// to 16) and forms the tile products there: with tensor cores (WMMA, 16x16x16, fp32
// accumulation) for fp16/bf16 on sm_80+, with plain FMA loops for fp32 and float64. The
// row-wise softmax steps run one thread per major row; so do the strided extras of a row (its
// keys outside the block segment, read straight from global memory). The accumulators (out, or
// dq / dk and dv) stay in shared memory in fp32 until the tile's last minor tile.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <torch/library.h>

#include <type_traits>

#include "common/cuda_utils.cuh"
#include "sparse_attention/sparse_attention.h"
#include "sparse_attention/sparse_attention_step.h"

namespace hvision::sparse_attention {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / gpu::kWarpSize;
constexpr int kFragment = 16;  // WMMA m16n16k16
// Row padding of every shared tile (elements): keeps WMMA's leading dimensions multiples of 8
// and staggers rows across banks.
constexpr int kPad = 8;

// ---------------------------------------------------------------------------------------------
// Element types: S is the storage type (the inputs'), T the accumulation type.
// ---------------------------------------------------------------------------------------------
template <typename scalar_t>
struct DeviceType {
  using type = scalar_t;
};
template <>
struct DeviceType<at::Half> {
  using type = __half;
};
template <>
struct DeviceType<at::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename S>
constexpr bool kHalfPrecision = std::is_same_v<S, __half> || std::is_same_v<S, __nv_bfloat16>;

HV_DEVICE float widen(__half x) { return __half2float(x); }
HV_DEVICE float widen(__nv_bfloat16 x) { return __bfloat162float(x); }
HV_DEVICE float widen(float x) { return x; }
HV_DEVICE double widen(double x) { return x; }

template <typename S, typename T>
HV_DEVICE S narrow(T x) {
  if constexpr (std::is_same_v<S, __half>) {
    return __float2half_rn(x);
  } else if constexpr (std::is_same_v<S, __nv_bfloat16>) {
    return __float2bfloat16_rn(x);
  } else {
    return static_cast<S>(x);
  }
}

// ---------------------------------------------------------------------------------------------
// Shared-memory layout of a block: `count` tiles of each kind, carved in order, 128-byte aligned.
// ---------------------------------------------------------------------------------------------
struct Layout {
  int tile;       // kTile
  int dp;         // head_dim rounded up to a multiple of 16
  int ld_rows;    // leading dimension of (tile x dp) tiles
  int ld_scores;  // leading dimension of (tile x tile) tiles

  HV_HOST_DEVICE Layout(int tile_size, int64_t head_dim)
      : tile(tile_size),
        dp(static_cast<int>((head_dim + kFragment - 1) / kFragment * kFragment)),
        ld_rows(dp + kPad),
        ld_scores(tile_size + kPad) {}

  HV_HOST_DEVICE static size_t aligned(size_t bytes) { return (bytes + 127) / 128 * 128; }
  HV_HOST_DEVICE size_t rows_bytes(size_t element) const { return aligned(element * tile * ld_rows); }
  HV_HOST_DEVICE size_t scores_bytes(size_t element) const {
    return aligned(element * tile * ld_scores);
  }
  HV_HOST_DEVICE size_t vector_bytes(size_t element) const { return aligned(element * tile); }
};

// Hands out consecutive regions of dynamic shared memory.
struct Carver {
  char* next;
  template <typename E>
  HV_DEVICE E* take(size_t bytes) {
    E* region = reinterpret_cast<E*>(next);
    next += bytes;
    return region;
  }
};

// Shared memory of the forward kernel: q rows, k and v tiles (S); scores (T); probabilities (S);
// the output accumulator (T); each row's normaliser (T).
template <typename S, typename T>
HV_HOST_DEVICE size_t forward_shared_bytes(const Layout& l) {
  return 3 * l.rows_bytes(sizeof(S)) + l.scores_bytes(sizeof(T)) + l.scores_bytes(sizeof(S)) +
         l.rows_bytes(sizeof(T)) + l.vector_bytes(sizeof(T));
}

// Of the backward kernel: x, z rows and y, w tiles (S); scores and dp (T); probabilities and
// dS (S); the dx and dw accumulators (T); the minor tile's lse and row_dot (T).
template <typename S, typename T>
HV_HOST_DEVICE size_t backward_shared_bytes(const Layout& l) {
  return 4 * l.rows_bytes(sizeof(S)) + 2 * l.scores_bytes(sizeof(T)) +
         2 * l.scores_bytes(sizeof(S)) + 2 * l.rows_bytes(sizeof(T)) + 2 * l.vector_bytes(sizeof(T));
}

// ---------------------------------------------------------------------------------------------
// Block-wide tile operations (all threads of the block call them)
// ---------------------------------------------------------------------------------------------

// dst (tile x dp, ld) <- rows [row0, row0 + count) of a (length x head_dim) matrix, zero-padded.
template <typename S>
HV_DEVICE void load_rows(S* dst, const Layout& l, const S* src, int64_t row0, int64_t count,
                         int64_t head_dim) {
  for (int index = threadIdx.x; index < l.tile * l.dp; index += blockDim.x) {
    const int r = index / l.dp, d = index % l.dp;
    dst[r * l.ld_rows + d] =
        (r < count && d < head_dim) ? src[(row0 + r) * head_dim + d] : narrow<S>(0.0f);
  }
}

template <typename T>
HV_DEVICE void zero_rows(T* dst, const Layout& l) {
  for (int index = threadIdx.x; index < l.tile * l.ld_rows; index += blockDim.x) dst[index] = T(0);
}

// c (tile x tile, ld_scores) = alpha · a (tile x dp) · b (tile x dp)^T, with FMA loops.
template <typename S, typename T>
HV_DEVICE void matmul_nt_fma(T* c, const S* a, const S* b, const Layout& l, T alpha) {
  for (int index = threadIdx.x; index < l.tile * l.tile; index += blockDim.x) {
    const int r = index / l.tile, col = index % l.tile;
    T sum = 0;
    for (int d = 0; d < l.dp; ++d) sum += widen(a[r * l.ld_rows + d]) * widen(b[col * l.ld_rows + d]);
    c[r * l.ld_scores + col] = alpha * sum;
  }
}

// c (tile x dp, ld_rows) += a (tile x tile, ld_scores) · b (tile x dp), with FMA loops.
template <typename S, typename T>
HV_DEVICE void matmul_nn_accumulate_fma(T* c, const S* a, const S* b, const Layout& l) {
  for (int index = threadIdx.x; index < l.tile * l.dp; index += blockDim.x) {
    const int r = index / l.dp, d = index % l.dp;
    T sum = 0;
    for (int j = 0; j < l.tile; ++j) sum += widen(a[r * l.ld_scores + j]) * widen(b[j * l.ld_rows + d]);
    c[r * l.ld_rows + d] += sum;
  }
}

// The same products on tensor cores (fp16/bf16 on sm_80+): each warp takes 16x16 output
// fragments in turn; the (T = float) output stays in shared memory between calls.
template <typename S>
HV_DEVICE void matmul_nt_tensor_cores(float* c, const S* a, const S* b, const Layout& l, float alpha) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  const int per_side = l.tile / kFragment;
  for (int f = threadIdx.x / gpu::kWarpSize; f < per_side * per_side; f += kWarps) {
    const int fr = f / per_side, fc = f % per_side;
    wmma::fragment<wmma::accumulator, kFragment, kFragment, kFragment, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int k = 0; k < l.dp; k += kFragment) {
      wmma::fragment<wmma::matrix_a, kFragment, kFragment, kFragment, S, wmma::row_major> fa;
      wmma::fragment<wmma::matrix_b, kFragment, kFragment, kFragment, S, wmma::col_major> fb;
      wmma::load_matrix_sync(fa, a + fr * kFragment * l.ld_rows + k, l.ld_rows);
      wmma::load_matrix_sync(fb, b + fc * kFragment * l.ld_rows + k, l.ld_rows);
      wmma::mma_sync(acc, fa, fb, acc);
    }
    for (int i = 0; i < acc.num_elements; ++i) acc.x[i] *= alpha;
    wmma::store_matrix_sync(c + fr * kFragment * l.ld_scores + fc * kFragment, acc, l.ld_scores,
                            wmma::mem_row_major);
  }
#else
  matmul_nt_fma(c, a, b, l, alpha);
#endif
}

template <typename S>
HV_DEVICE void matmul_nn_accumulate_tensor_cores(float* c, const S* a, const S* b, const Layout& l) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  const int rows = l.tile / kFragment, cols = l.dp / kFragment;
  for (int f = threadIdx.x / gpu::kWarpSize; f < rows * cols; f += kWarps) {
    const int fr = f / cols, fc = f % cols;
    float* c_tile = c + fr * kFragment * l.ld_rows + fc * kFragment;
    wmma::fragment<wmma::accumulator, kFragment, kFragment, kFragment, float> acc;
    wmma::load_matrix_sync(acc, c_tile, l.ld_rows, wmma::mem_row_major);
    for (int k = 0; k < l.tile; k += kFragment) {
      wmma::fragment<wmma::matrix_a, kFragment, kFragment, kFragment, S, wmma::row_major> fa;
      wmma::fragment<wmma::matrix_b, kFragment, kFragment, kFragment, S, wmma::row_major> fb;
      wmma::load_matrix_sync(fa, a + fr * kFragment * l.ld_scores + k, l.ld_scores);
      wmma::load_matrix_sync(fb, b + k * l.ld_rows + fc * kFragment, l.ld_rows);
      wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(c_tile, acc, l.ld_rows, wmma::mem_row_major);
  }
#else
  matmul_nn_accumulate_fma(c, a, b, l);
#endif
}

template <typename S, typename T>
HV_DEVICE void matmul_nt(T* c, const S* a, const S* b, const Layout& l, T alpha) {
  if constexpr (kHalfPrecision<S>) {
    matmul_nt_tensor_cores(c, a, b, l, alpha);
  } else {
    matmul_nt_fma(c, a, b, l, alpha);
  }
}

template <typename S, typename T>
HV_DEVICE void matmul_nn_accumulate(T* c, const S* a, const S* b, const Layout& l) {
  if constexpr (kHalfPrecision<S>) {
    matmul_nn_accumulate_tensor_cores(c, a, b, l);
  } else {
    matmul_nn_accumulate_fma(c, a, b, l);
  }
}

// Rows [0, count) of a (tile x dp) accumulator, times scale[r] when given, written to rows
// [row0, row0 + count) of a (length x head_dim) output.
template <typename S, typename T>
HV_DEVICE void store_rows(S* dst, const T* acc, const T* scale, const Layout& l, int64_t row0,
                          int64_t count, int64_t head_dim) {
  for (int64_t index = threadIdx.x; index < count * head_dim; index += blockDim.x) {
    const int r = static_cast<int>(index / head_dim), d = static_cast<int>(index % head_dim);
    const T value = acc[r * l.ld_rows + d] * (scale ? scale[r] : T(1));
    dst[(row0 + r) * head_dim + d] = narrow<S>(value);
  }
}

template <typename S, typename T>
HV_DEVICE T dot_row(const S* staged, const S* global_row, int64_t head_dim) {
  T sum = 0;
  for (int64_t d = 0; d < head_dim; ++d) sum += widen(staged[d]) * widen(global_row[d]);
  return sum;
}

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------
template <typename S, typename T>
struct ForwardParams {
  const S *q, *k, *v;
  S* out;
  T* lse;
  SparsePattern pattern;
  SparseTiling tiling;  // set by the launch, for the tile size it picks
  T scale;
  int64_t head_dim;
};

template <typename S, typename T, int kTile>
__global__ void __launch_bounds__(kThreads) forward_kernel(const ForwardParams<S, T> p) {
  extern __shared__ __align__(128) char shared[];
  const Layout l(kTile, p.head_dim);
  Carver carve{shared};
  S* rows_q = carve.take<S>(l.rows_bytes(sizeof(S)));
  S* tile_k = carve.take<S>(l.rows_bytes(sizeof(S)));
  S* tile_v = carve.take<S>(l.rows_bytes(sizeof(S)));
  T* scores = carve.take<T>(l.scores_bytes(sizeof(T)));
  S* probs = carve.take<S>(l.scores_bytes(sizeof(S)));
  T* acc = carve.take<T>(l.rows_bytes(sizeof(T)));
  T* normaliser = carve.take<T>(l.vector_bytes(sizeof(T)));

  const SparsePattern& pattern = p.pattern;
  const int64_t L = pattern.length, D = p.head_dim;
  const int64_t head = blockIdx.x / p.tiling.tiles;
  const MinorRange tile = p.tiling.tile_range(blockIdx.x % p.tiling.tiles);
  const int64_t a0 = tile.begin, rows = tile.size();
  const S* q = p.q + head * L * D;
  const S* k = p.k + head * L * D;
  const S* v = p.v + head * L * D;

  load_rows(rows_q, l, q, a0, rows, D);
  zero_rows(acc, l);
  const int r = threadIdx.x;  // the row this thread runs the softmax steps of (r < kTile)
  OnlineSoftmax<T> state;
  for (SparseMinorTiles t(pattern, a0, tile.end, kTile); t.next();) {
    __syncthreads();  // the previous tile's products are done with tile_k, tile_v and probs
    load_rows(tile_k, l, k, t.begin, t.size, D);
    load_rows(tile_v, l, v, t.begin, t.size, D);
    __syncthreads();
    matmul_nt(scores, rows_q, tile_k, l, p.scale);
    __syncthreads();
    if (r < rows) {
      T* row = scores + r * l.ld_scores;
      T tile_max = math::negative_infinity<T>();
      for (int c = 0; c < kTile; ++c) {
        const bool allowed = c < t.size && sparse_allows(pattern, a0 + r, t.begin + c);
        row[c] = allowed ? row[c] : math::negative_infinity<T>();
        tile_max = row[c] > tile_max ? row[c] : tile_max;
      }
      const T factor = online_softmax_advance(state, tile_max);
      const T shift = online_softmax_shift(state);
      T sum = 0;
      for (int c = 0; c < kTile; ++c) {
        const T weight = online_softmax_weight(row[c], shift);
        sum += weight;
        probs[r * l.ld_scores + c] = narrow<S>(weight);
      }
      state.sum += sum;
      for (int d = 0; d < l.dp; ++d) acc[r * l.ld_rows + d] *= factor;
    } else if (r < kTile) {
      for (int c = 0; c < kTile; ++c) probs[r * l.ld_scores + c] = narrow<S>(T(0));
    }
    __syncthreads();
    matmul_nn_accumulate(acc, probs, tile_v, l);
  }
  __syncthreads();
  if (r < rows) {
    const int64_t a = a0 + r;
    T* acc_row = acc + r * l.ld_rows;
    for (SparseStridedRuns run(pattern, a, a0, tile.end, L); run.next();) {
      for (int64_t u = 0; u < run.count; ++u) {
        const int64_t b = run.first + u * pattern.stride;
        const T score = p.scale * dot_row<S, T>(rows_q + r * l.ld_rows, k + b * D, D);
        const T factor = online_softmax_advance(state, score);
        const T weight = online_softmax_weight(score, online_softmax_shift(state));
        state.sum += weight;
        for (int64_t d = 0; d < D; ++d) acc_row[d] = acc_row[d] * factor + weight * widen(v[b * D + d]);
      }
    }
    normaliser[r] = online_softmax_normaliser(state);
    p.lse[head * L + a] = online_softmax_lse(state);
  }
  __syncthreads();
  store_rows(p.out + head * L * D, acc, normaliser, l, a0, rows, D);
}

// ---------------------------------------------------------------------------------------------
// Backward: one kernel for both walks, as on the CPU. Scores are x · y^T, probability gradients
// z · w^T; dx += dS · y and, when dw_major is given (dv in the key-major walk), dw_major += P · w.
// lse and row_dot belong to the query of each pair: the major row in the query-major walk, the
// minor row in the key-major walk (pattern.transposed).
// ---------------------------------------------------------------------------------------------
template <typename S, typename T>
struct GradParams {
  const S *x, *y, *z, *w;
  const T *lse, *row_dot;
  S *dx, *dw_major;
  SparsePattern pattern;
  SparseTiling tiling;  // set by the launch, for the tile size it picks
  T scale;
  int64_t head_dim;
};

template <typename S, typename T, int kTile>
__global__ void __launch_bounds__(kThreads) backward_kernel(const GradParams<S, T> p) {
  extern __shared__ __align__(128) char shared[];
  const Layout l(kTile, p.head_dim);
  Carver carve{shared};
  S* rows_x = carve.take<S>(l.rows_bytes(sizeof(S)));
  S* rows_z = carve.take<S>(l.rows_bytes(sizeof(S)));
  S* tile_y = carve.take<S>(l.rows_bytes(sizeof(S)));
  S* tile_w = carve.take<S>(l.rows_bytes(sizeof(S)));
  T* scores = carve.take<T>(l.scores_bytes(sizeof(T)));
  T* d_probs = carve.take<T>(l.scores_bytes(sizeof(T)));
  S* probs = carve.take<S>(l.scores_bytes(sizeof(S)));
  S* d_scores = carve.take<S>(l.scores_bytes(sizeof(S)));
  T* acc_x = carve.take<T>(l.rows_bytes(sizeof(T)));
  T* acc_w = carve.take<T>(l.rows_bytes(sizeof(T)));
  T* minor_lse = carve.take<T>(l.vector_bytes(sizeof(T)));
  T* minor_row_dot = carve.take<T>(l.vector_bytes(sizeof(T)));

  const SparsePattern& pattern = p.pattern;
  const int64_t L = pattern.length, D = p.head_dim;
  const int64_t head = blockIdx.x / p.tiling.tiles;
  const MinorRange tile = p.tiling.tile_range(blockIdx.x % p.tiling.tiles);
  const int64_t a0 = tile.begin, rows = tile.size();
  const S* x = p.x + head * L * D;
  const S* y = p.y + head * L * D;
  const S* z = p.z + head * L * D;
  const S* w = p.w + head * L * D;
  const T* lse = p.lse + head * L;
  const T* row_dot = p.row_dot + head * L;
  const bool with_dw = p.dw_major != nullptr;

  load_rows(rows_x, l, x, a0, rows, D);
  load_rows(rows_z, l, z, a0, rows, D);
  zero_rows(acc_x, l);
  zero_rows(acc_w, l);
  const int r = threadIdx.x;
  const int64_t a = a0 + r;
  const T major_lse = r < rows ? lse[a] : T(0);
  const T major_row_dot = r < rows ? row_dot[a] : T(0);
  for (SparseMinorTiles t(pattern, a0, tile.end, kTile); t.next();) {
    __syncthreads();
    load_rows(tile_y, l, y, t.begin, t.size, D);
    load_rows(tile_w, l, w, t.begin, t.size, D);
    for (int c = threadIdx.x; c < kTile; c += blockDim.x) {
      minor_lse[c] = c < t.size ? lse[t.begin + c] : T(0);
      minor_row_dot[c] = c < t.size ? row_dot[t.begin + c] : T(0);
    }
    __syncthreads();
    matmul_nt(scores, rows_x, tile_y, l, p.scale);
    matmul_nt(d_probs, rows_z, tile_w, l, T(1));
    __syncthreads();
    if (r < kTile) {
      for (int c = 0; c < kTile; ++c) {
        const bool allowed = r < rows && c < t.size && sparse_allows(pattern, a, t.begin + c);
        const T query_lse = pattern.transposed ? minor_lse[c] : major_lse;
        const T query_row_dot = pattern.transposed ? minor_row_dot[c] : major_row_dot;
        const T prob = allowed ? softmax_probability(scores[r * l.ld_scores + c], query_lse) : T(0);
        const T d_score = allowed ? p.scale * softmax_score_grad(prob, d_probs[r * l.ld_scores + c],
                                                                query_row_dot)
                                  : T(0);
        probs[r * l.ld_scores + c] = narrow<S>(prob);
        d_scores[r * l.ld_scores + c] = narrow<S>(d_score);
      }
    }
    __syncthreads();
    matmul_nn_accumulate(acc_x, d_scores, tile_y, l);
    if (with_dw) matmul_nn_accumulate(acc_w, probs, tile_w, l);
  }
  __syncthreads();
  if (r < rows) {
    for (SparseStridedRuns run(pattern, a, a0, tile.end, L); run.next();) {
      for (int64_t u = 0; u < run.count; ++u) {
        const int64_t b = run.first + u * pattern.stride;
        const int64_t query = pattern.transposed ? b : a;
        const T prob = softmax_probability(
            p.scale * dot_row<S, T>(rows_x + r * l.ld_rows, y + b * D, D), lse[query]);
        const T d_prob = dot_row<S, T>(rows_z + r * l.ld_rows, w + b * D, D);
        const T d_score = p.scale * softmax_score_grad(prob, d_prob, row_dot[query]);
        for (int64_t d = 0; d < D; ++d) {
          acc_x[r * l.ld_rows + d] += d_score * widen(y[b * D + d]);
          if (with_dw) acc_w[r * l.ld_rows + d] += prob * widen(w[b * D + d]);
        }
      }
    }
  }
  __syncthreads();
  store_rows<S, T>(p.dx + head * L * D, acc_x, nullptr, l, a0, rows, D);
  if (with_dw) store_rows<S, T>(p.dw_major + head * L * D, acc_w, nullptr, l, a0, rows, D);
}

// ---------------------------------------------------------------------------------------------
// Launch
// ---------------------------------------------------------------------------------------------

int shared_memory_limit() {
  int device = 0, limit = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return limit;
}

// Launches `kernel` over every (head, tile) with tiles of kTile rows when the `bytes` of shared
// memory it needs fit the device; false if not.
template <int kTile, typename Params>
bool launch_tiles(void (*kernel)(Params), size_t bytes, Params params, int64_t heads, int limit) {
  if (bytes > static_cast<size_t>(limit)) return false;
  params.tiling = SparseTiling(params.pattern, kTile);
  const int64_t blocks = heads * params.tiling.tiles;
  if (blocks == 0) return true;
  TORCH_CHECK(blocks <= INT32_MAX, "sparse_attention: too many tiles for one launch (", blocks, ")");
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  kernel<<<static_cast<unsigned>(blocks), kThreads, bytes, at::cuda::getCurrentCUDAStream()>>>(params);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

template <int kTile, typename S, typename T>
bool launch_with(const ForwardParams<S, T>& params, int64_t heads, int limit) {
  const size_t bytes = forward_shared_bytes<S, T>(Layout(kTile, params.head_dim));
  return launch_tiles<kTile>(forward_kernel<S, T, kTile>, bytes, params, heads, limit);
}

template <int kTile, typename S, typename T>
bool launch_with(const GradParams<S, T>& params, int64_t heads, int limit) {
  const size_t bytes = backward_shared_bytes<S, T>(Layout(kTile, params.head_dim));
  return launch_tiles<kTile>(backward_kernel<S, T, kTile>, bytes, params, heads, limit);
}

// Launches a pass (forward or backward, by its Params) with tiles of 64 rows for 2-byte types,
// 32 for fp32, 16 for float64 (shared memory grows with the element size), halved while the
// device's shared memory per block is too small.
template <typename S, typename T, template <typename, typename> class Params>
void launch(const Params<S, T>& params, int64_t heads) {
  const int limit = shared_memory_limit();
  bool launched = false;
  if constexpr (sizeof(S) == 2) launched = launch_with<64>(params, heads, limit);
  if constexpr (sizeof(S) <= 4) launched = launched || launch_with<32>(params, heads, limit);
  launched = launched || launch_with<16>(params, heads, limit);
  TORCH_CHECK(launched, "sparse_attention: head_dim ", params.head_dim,
              " needs more shared memory per block than this device has (", limit, " bytes)");
}

template <typename scalar_t>
const typename DeviceType<scalar_t>::type* device_data(const at::Tensor& t) {
  return reinterpret_cast<const typename DeviceType<scalar_t>::type*>(t.const_data_ptr<scalar_t>());
}

template <typename scalar_t>
typename DeviceType<scalar_t>::type* device_data_mut(at::Tensor& t) {
  return reinterpret_cast<typename DeviceType<scalar_t>::type*>(t.mutable_data_ptr<scalar_t>());
}

ForwardResult forward_cuda(const AttentionInputs& in) {
  const c10::cuda::CUDAGuard guard(in.q.device());
  at::Tensor out = at::empty_like(in.q);
  at::Tensor lse = at::empty({in.batch, in.heads, in.length},
                             in.q.options().dtype(in.acc_dtype()));
  if (in.q.numel() == 0) return {out, lse};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.q.scalar_type(), "sparse_attention_fwd_cuda", [&] {
    using S = typename DeviceType<scalar_t>::type;
    using T = at::opmath_type<scalar_t>;
    ForwardParams<S, T> params{device_data<scalar_t>(in.q), device_data<scalar_t>(in.k),
                               device_data<scalar_t>(in.v), device_data_mut<scalar_t>(out),
                               lse.mutable_data_ptr<T>(), in.pattern, SparseTiling{},
                               static_cast<T>(in.scale), in.head_dim};
    launch(params, in.batch * in.heads);
  });
  return {out, lse};
}

BackwardResult backward_cuda(const AttentionInputs& in, const SavedForward& saved) {
  const c10::cuda::CUDAGuard guard(in.q.device());
  at::Tensor dq = at::empty_like(in.q), dk = at::empty_like(in.k), dv = at::empty_like(in.v);
  if (in.q.numel() == 0) return {dq, dk, dv};
  const at::ScalarType acc = in.acc_dtype();
  // Σ_j p_ij dp_ij of each query row, which the softmax backward subtracts.
  const at::Tensor row_dot = (saved.dout.to(acc) * saved.out.to(acc)).sum(-1).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.q.scalar_type(), "sparse_attention_bwd_cuda", [&] {
    using S = typename DeviceType<scalar_t>::type;
    using T = at::opmath_type<scalar_t>;
    const T scale = static_cast<T>(in.scale);
    const T* lse = saved.lse.const_data_ptr<T>();
    const T* dots = row_dot.const_data_ptr<T>();
    const int64_t heads = in.batch * in.heads;
    // dq: query-major, scores q · k^T, dp = dout · v^T.
    launch(GradParams<S, T>{device_data<scalar_t>(in.q), device_data<scalar_t>(in.k),
                                     device_data<scalar_t>(saved.dout), device_data<scalar_t>(in.v),
                                     lse, dots, device_data_mut<scalar_t>(dq), nullptr, in.pattern,
                                     SparseTiling{}, scale, in.head_dim},
                    heads);
    // dk, dv: key-major, scores k · q^T, dp = v · dout^T, dv += p · dout.
    const SparsePattern transposed = in.transposed_pattern();
    launch(GradParams<S, T>{device_data<scalar_t>(in.k), device_data<scalar_t>(in.q),
                                     device_data<scalar_t>(in.v), device_data<scalar_t>(saved.dout),
                                     lse, dots, device_data_mut<scalar_t>(dk),
                                     device_data_mut<scalar_t>(dv), transposed, SparseTiling{}, scale,
                                     in.head_dim},
                    heads);
  });
  return {dq, dk, dv};
}

constexpr Kernels kCudaKernels{&forward_cuda, &backward_cuda};

}  // namespace

TORCH_LIBRARY_IMPL(hvision, CUDA, m) {
  m.impl("sparse_attention_fwd", &forward_op<kCudaKernels>);
  m.impl("sparse_attention_bwd", &backward_op<kCudaKernels>);
}

}  // namespace hvision::sparse_attention
