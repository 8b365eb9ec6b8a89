// merge_tokens CUDA kernels. The math of a step is merge_tokens_step.h's, shared with the CPU
// kernels.
//
// best_matches_kernel: one block per (batch, tile of 64 A tokens) walks every tile of 64 B
// tokens: the two tiles' metric rows are staged through shared memory 16 channels at a time
// (widened to the accumulation type and divided by their norms), each thread accumulates a 4 x 4 block of dot products,
// turns them into cosine similarities and folds them into the best match of each of its 4 rows.
// The 16 threads that share rows then combine their matches by shuffles. The order on matches
// (higher value, then lower index) is total, so the result does not depend on the order of the
// folds, and the similarity matrix never leaves registers.
// segment_sum_kernel: one block per output row, threads over the channels, the row's sources
// summed in token order (deterministic). gather_rows_kernel: one block per token.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>

#include "common/cuda_utils.cuh"
#include "merge_tokens/merge_tokens.h"
#include "merge_tokens/merge_tokens_step.h"

namespace hvision::merge_tokens {
namespace {

constexpr int kTile = 64;       // A and B tokens per tile
constexpr int kDepth = 16;      // channels staged per step
constexpr int kPerThread = 4;   // rows and columns of dot products per thread
constexpr int kTileThreads = (kTile / kPerThread) * (kTile / kPerThread);  // 256
constexpr int kRowThreads = 256;

unsigned grid_size(int64_t blocks, const char* what) {
  TORCH_CHECK(blocks <= INT_MAX, "merge_tokens: ", what, " needs ", blocks,
              " CUDA blocks, more than one launch allows");
  return static_cast<unsigned>(blocks);
}

// ---------------------------------------------------------------------------------------------
// Norm divisors: one warp per token.
// ---------------------------------------------------------------------------------------------

template <typename scalar_t, typename T>
__global__ void norm_divisors_kernel(const scalar_t* metric, T* out, int64_t tokens,
                                     int64_t channels) {
  const int64_t token = static_cast<int64_t>(blockIdx.x) * (blockDim.x / gpu::kWarpSize) +
                        threadIdx.x / gpu::kWarpSize;
  if (token >= tokens) return;  // whole warps leave together
  const int lane = threadIdx.x % gpu::kWarpSize;
  const scalar_t* row = metric + token * channels;
  T sum = 0;
  for (int64_t c = lane; c < channels; c += gpu::kWarpSize) sum += T(row[c]) * T(row[c]);
  sum = gpu::group_sum(sum, gpu::kWarpSize);
  if (lane == 0) out[token] = norm_divisor(sum);
}

// ---------------------------------------------------------------------------------------------
// Best matches
// ---------------------------------------------------------------------------------------------

template <typename scalar_t, typename T>
struct MatchArgs {
  const scalar_t* metric;     // (batch, N, Cm)
  const T* divisor;           // (batch, N): what each metric row is divided by
  const T* importance;        // (batch, N) or nullptr
  T* score;                   // (batch, Na)
  int64_t* best;              // (batch, Na)
  int64_t tokens, channels, protect, a_count, b_count;
  T importance_weight;
};

// Stages channels [k0, k0 + kDepth) of `count` unit rows, the first at token `first_token` and
// the rest 2 apart, as tile[channel][row]; rows or channels out of range read zero.
template <typename scalar_t, typename T>
HV_DEVICE void stage_rows(const MatchArgs<scalar_t, T>& args, const scalar_t* batch_metric,
                          const T* divisors, int64_t first_token, int64_t count, int64_t k0, T (*tile)[kTile]) {
  for (int i = threadIdx.x; i < kTile * kDepth; i += kTileThreads) {
    const int row = i / kDepth, k = i % kDepth;
    const int64_t channel = k0 + k;
    const bool inside = row < count && channel < args.channels;
    const int64_t token = first_token + 2 * row;
    tile[k][row] = inside ? T(batch_metric[token * args.channels + channel]) / divisors[token] : T(0);
  }
}

template <typename T>
HV_DEVICE Match<T> shuffle_match(const Match<T>& m, int offset) {
  return {__shfl_xor_sync(gpu::kFullWarp, m.value, offset),
          __shfl_xor_sync(gpu::kFullWarp, m.index, offset)};
}

template <typename scalar_t, typename T>
__global__ void __launch_bounds__(kTileThreads) best_matches_kernel(const MatchArgs<scalar_t, T> args) {
  __shared__ T a_tile[kDepth][kTile];
  __shared__ T b_tile[kDepth][kTile];
  const int64_t tiles_per_batch = (args.a_count + kTile - 1) / kTile;
  const int64_t b = blockIdx.x / tiles_per_batch;
  const int64_t first_a = blockIdx.x % tiles_per_batch * kTile;
  const int64_t a_rows = std::min<int64_t>(kTile, args.a_count - first_a);
  const scalar_t* batch_metric = args.metric + b * args.tokens * args.channels;
  const T* divisors = args.divisor + b * args.tokens;
  const int row0 = threadIdx.x / (kTile / kPerThread) * kPerThread;  // this thread's rows
  const int col0 = threadIdx.x % (kTile / kPerThread) * kPerThread;  // and columns in a tile
  const int64_t a_token = args.protect + 2 * first_a;

  Match<T> best[kPerThread];
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) best[i] = {math::negative_infinity<T>(), 0};
  for (int64_t first_b = 0; first_b < args.b_count; first_b += kTile) {
    const int64_t b_rows = std::min<int64_t>(kTile, args.b_count - first_b);
    const int64_t b_token = args.protect + 1 + 2 * first_b;
    T dot[kPerThread][kPerThread] = {};
    for (int64_t k0 = 0; k0 < args.channels; k0 += kDepth) {
      stage_rows(args, batch_metric, divisors, a_token, a_rows, k0, a_tile);
      stage_rows(args, batch_metric, divisors, b_token, b_rows, k0, b_tile);
      __syncthreads();
#pragma unroll
      for (int k = 0; k < kDepth; ++k) {
#pragma unroll
        for (int i = 0; i < kPerThread; ++i) {
#pragma unroll
          for (int j = 0; j < kPerThread; ++j) dot[i][j] += a_tile[k][row0 + i] * b_tile[k][col0 + j];
        }
      }
      __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      if (col0 + j >= b_rows) continue;
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) {
        const Match<T> candidate{cosine_similarity(dot[i][j]), first_b + col0 + j};
        if (better_match(candidate, best[i])) best[i] = candidate;
      }
    }
  }
  // The 16 threads of a row group are 16 consecutive lanes of one warp.
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    for (int offset = kTile / kPerThread / 2; offset > 0; offset /= 2) {
      const Match<T> other = shuffle_match(best[i], offset);
      if (better_match(other, best[i])) best[i] = other;
    }
  }
  if (col0 != 0) return;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    if (row0 + i >= a_rows) continue;
    const int64_t token = a_token + 2 * (row0 + i);
    const T importance = args.importance ? args.importance[b * args.tokens + token] : T(0);
    const int64_t out = b * args.a_count + first_a + row0 + i;
    args.score[out] = merge_score(best[i].value, importance, args.importance_weight);
    args.best[out] = best[i].index;
  }
}

std::tuple<at::Tensor, at::Tensor> best_matches_cuda(const at::Tensor& metric,
                                                     const std::optional<at::Tensor>& importance,
                                                     int64_t protect, double importance_weight) {
  const c10::cuda::CUDAGuard guard(metric.device());
  const at::ScalarType acc = at::toOpMathType(metric.scalar_type());
  const int64_t batch = metric.size(0), tokens = metric.size(1), channels = metric.size(2);
  const int64_t a_count = (tokens - protect + 1) / 2, b_count = (tokens - protect) / 2;
  const auto acc_options = metric.options().dtype(acc);
  at::Tensor score = at::empty({batch, a_count}, acc_options);
  at::Tensor best = at::empty({batch, a_count}, acc_options.dtype(at::kLong));
  if (score.numel() == 0) return {score, best};
  at::Tensor divisor = at::empty({batch, tokens}, acc_options);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, metric.scalar_type(),
                                  "merge_tokens_best_matches_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    constexpr int kWarps = kRowThreads / gpu::kWarpSize;
    norm_divisors_kernel<<<grid_size((batch * tokens + kWarps - 1) / kWarps, "the norms"),
                           kRowThreads, 0, stream>>>(metric.const_data_ptr<scalar_t>(),
                                                     divisor.mutable_data_ptr<T>(),
                                                     batch * tokens, channels);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const MatchArgs<scalar_t, T> args{metric.const_data_ptr<scalar_t>(),
                                      divisor.const_data_ptr<T>(),
                                      importance ? importance->const_data_ptr<T>() : nullptr,
                                      score.mutable_data_ptr<T>(),
                                      best.mutable_data_ptr<int64_t>(),
                                      tokens,
                                      channels,
                                      protect,
                                      a_count,
                                      b_count,
                                      static_cast<T>(importance_weight)};
    const int64_t tiles = batch * ((a_count + kTile - 1) / kTile);
    best_matches_kernel<<<grid_size(tiles, "the matching"), kTileThreads, 0, stream>>>(args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {score, best};
}

// ---------------------------------------------------------------------------------------------
// Segment sums and row gathers
// ---------------------------------------------------------------------------------------------

template <typename scalar_t, typename T>
__global__ void segment_sum_kernel(const scalar_t* values, const T* weights,
                                   const int64_t* sorted_rows, const int64_t* sources,
                                   scalar_t* out, T* totals, int64_t tokens, int64_t rows,
                                   int64_t channels, bool average) {
  const int64_t row = blockIdx.x;
  const int64_t b = row / rows;
  const int64_t begin = sources_begin(sorted_rows + b * tokens, tokens, row % rows);
  const int64_t end = sources_begin(sorted_rows + b * tokens, tokens, row % rows + 1);
  const int64_t* row_sources = sources + b * tokens;
  const auto weight_of = [&](int64_t token) { return weights ? weights[b * tokens + token] : T(1); };
  if (threadIdx.x == 0) {
    T total = 0;
    for (int64_t k = begin; k < end; ++k) total += weight_of(row_sources[k]);
    totals[row] = total;
  }
  for (int64_t c = threadIdx.x; c < channels; c += blockDim.x) {
    T sum = 0, total = 0;
    for (int64_t k = begin; k < end; ++k) {
      const int64_t token = row_sources[k];
      const T weight = weight_of(token);
      sum = merge_accumulate(sum, weight, T(values[(b * tokens + token) * channels + c]));
      total += weight;
    }
    out[row * channels + c] = static_cast<scalar_t>(average ? merge_average(sum, total) : sum);
  }
}

int row_threads(int64_t channels) {
  const int64_t warps = (channels + gpu::kWarpSize - 1) / gpu::kWarpSize;
  return static_cast<int>(std::clamp<int64_t>(warps, 1, kRowThreads / gpu::kWarpSize) *
                          gpu::kWarpSize);
}

std::tuple<at::Tensor, at::Tensor> segment_sum_cuda(const at::Tensor& values,
                                                    const std::optional<at::Tensor>& weights,
                                                    const RowSources& rows, bool average) {
  const c10::cuda::CUDAGuard guard(values.device());
  const int64_t batch = values.size(0), tokens = values.size(1), channels = values.size(2);
  at::Tensor out = at::empty({batch, rows.rows, channels}, values.options());
  at::Tensor totals =
      at::empty({batch, rows.rows}, values.options().dtype(at::toOpMathType(values.scalar_type())));
  if (totals.numel() == 0) return {out, totals};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(),
                                  "merge_tokens_segment_sum_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    segment_sum_kernel<<<grid_size(totals.numel(), "the merge"), row_threads(channels), 0,
                         at::cuda::getCurrentCUDAStream()>>>(
        values.const_data_ptr<scalar_t>(), weights ? weights->const_data_ptr<T>() : nullptr,
        rows.sorted_rows.const_data_ptr<int64_t>(), rows.sources.const_data_ptr<int64_t>(),
        out.mutable_data_ptr<scalar_t>(), totals.mutable_data_ptr<T>(), tokens, rows.rows,
        channels, average);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, totals};
}

template <typename scalar_t, typename T>
__global__ void gather_rows_kernel(const scalar_t* values, const int64_t* assign, const T* scale,
                                   scalar_t* out, int64_t tokens, int64_t rows,
                                   int64_t channels) {
  const int64_t token = blockIdx.x;
  const int64_t row = assign[token];
  const bool inside = row >= 0 && row < rows;  // checked on the host; never read out of bounds
  const scalar_t* source = values + (token / tokens * rows + (inside ? row : 0)) * channels;
  const T factor = scale ? scale[token] : T(1);
  for (int64_t c = threadIdx.x; c < channels; c += blockDim.x) {
    out[token * channels + c] = static_cast<scalar_t>(inside ? T(source[c]) * factor : T(0));
  }
}

at::Tensor gather_rows_cuda(const at::Tensor& values, const at::Tensor& assign,
                            const std::optional<at::Tensor>& scale) {
  const c10::cuda::CUDAGuard guard(values.device());
  const int64_t channels = values.size(2);
  at::Tensor out = at::empty({assign.size(0), assign.size(1), channels}, values.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(),
                                  "merge_tokens_gather_rows_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    gather_rows_kernel<<<grid_size(assign.numel(), "the gather"), row_threads(channels), 0,
                         at::cuda::getCurrentCUDAStream()>>>(
        values.const_data_ptr<scalar_t>(), assign.const_data_ptr<int64_t>(),
        scale ? scale->const_data_ptr<T>() : nullptr, out.mutable_data_ptr<scalar_t>(),
        assign.size(1), values.size(1), channels);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

constexpr Kernels kCudaKernels{&best_matches_cuda, &segment_sum_cuda, &gather_rows_cuda};

}  // namespace

TORCH_LIBRARY_IMPL(hvision, CUDA, m) {
  m.impl("merge_tokens_fwd", &merge_forward_op<kCudaKernels>);
  m.impl("merge_tokens_bwd", &merge_backward_op<kCudaKernels>);
  m.impl("unmerge_tokens_fwd", &unmerge_forward_op<kCudaKernels>);
  m.impl("unmerge_tokens_bwd", &unmerge_backward_op<kCudaKernels>);
}

}  // namespace hvision::merge_tokens
