// hopfield_retrieval CUDA kernels: plain FMA arithmetic in the accumulation type (no tensor
// cores). One warp owns one query row; each lane holds the features c = lane + 32 i of the
// row's state ξ in registers, so a dot product with a stored pattern is a coalesced read of the
// pattern, per-lane FMAs and a warp sum. The forward kernel runs every step of its row in one
// launch with an online softmax over the patterns, 32 at a time.
//
// The backward pass is two deterministic launches, with no atomics:
//   1. per query row, the steps in reverse: dξ_{s-1} = Σ_j g_j X_j, with g_j the gradient of the
//      row's dot product with pattern j; it saves dξ_s of every intermediate step and the row's
//      dξ_s·ξ_s, and writes dquery = dξ_0;
//   2. per stored pattern j, over every row that reads it (the whole batch when the patterns are
//      shared) in a fixed order: dX_j = Σ g ξ_{s-1} + Σ_{s<n} p dξ_s (+ p dout without values),
//      dV_j = Σ p dout. Each gradient row is owned by one warp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/cuda_utils.cuh"
#include "hopfield_retrieval/hopfield_retrieval.h"
#include "hopfield_retrieval/hopfield_retrieval_step.h"

namespace hvision::hopfield_retrieval {
namespace {

using gpu::group_sum;
using gpu::kFullWarp;
using gpu::kWarpSize;

constexpr int kWarpsPerBlock = 4;
constexpr int kThreads = kWarpsPerBlock * kWarpSize;

template <typename T>
HV_DEVICE T warp_max(T value) {
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
    const T other = __shfl_xor_sync(kFullWarp, value, offset);
    value = other > value ? other : value;
  }
  return value;
}

// A row of up to kPerLane * 32 features spread over the lanes: feature lane + 32 i in slot i.
template <typename T, int kPerLane>
struct LaneRow {
  T v[kPerLane];

  HV_DEVICE void fill(T value) {
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) v[i] = value;
  }
  template <typename S>
  HV_DEVICE void load(const S* row, int64_t width, int lane) {
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int64_t c = lane + i * kWarpSize;
      v[i] = c < width ? static_cast<T>(row[c]) : T(0);
    }
  }
  template <typename S>
  HV_DEVICE void store(S* row, int64_t width, int lane) const {
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int64_t c = lane + i * kWarpSize;
      if (c < width) row[c] = static_cast<S>(v[i]);
    }
  }
  // Σ_c v_c row_c over the warp (every lane gets the same bits).
  template <typename S>
  HV_DEVICE T dot(const S* row, int64_t width, int lane) const {
    T sum = 0;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int64_t c = lane + i * kWarpSize;
      if (c < width) sum += v[i] * static_cast<T>(row[c]);
    }
    return group_sum(sum, kWarpSize);
  }
  HV_DEVICE T dot(const LaneRow& other) const {
    T sum = 0;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) sum += v[i] * other.v[i];
    return group_sum(sum, kWarpSize);
  }
  // v += weight * row.
  template <typename S>
  HV_DEVICE void add_scaled(T weight, const S* row, int64_t width, int lane) {
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int64_t c = lane + i * kWarpSize;
      if (c < width) v[i] += weight * static_cast<T>(row[c]);
    }
  }
  HV_DEVICE void add_scaled(T weight, const LaneRow& row) {
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) v[i] += weight * row.v[i];
  }
  HV_DEVICE void scale(T factor) {
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) v[i] *= factor;
  }
};

// Everything a kernel reads, as raw pointers and sizes.
template <typename scalar_t>
struct Args {
  using T = at::opmath_type<scalar_t>;
  const scalar_t* query;   // (rows, d), rows = batch * heads * Q
  const scalar_t* stored;  // (sets, M, d)
  const scalar_t* values;  // (sets, M, dv); == stored when the values are the patterns
  const scalar_t* out;     // (rows, dv)                    backward
  const scalar_t* dout;    // (rows, dv)                    backward
  T* states;               // (n - 1, rows, d)              saved ξ_1 … ξ_{n-1}
  T* lse;                  // (n, rows)
  T* grad_states;          // (n - 1, rows, d)              backward: dξ_1 … dξ_{n-1}
  T* row_dots;             // (n, rows)                     backward: dξ_s·ξ_s
  int64_t batch, heads, queries, patterns, dim, value_dim, n_steps;
  T beta;
  bool shared;

  HV_DEVICE int64_t rows() const { return batch * heads * queries; }
  // The (M, ·) slab of patterns that a row of (batch * heads + h) reads.
  HV_DEVICE int64_t pattern_set(int64_t head) const {
    return shared ? head % heads : head;
  }
  HV_DEVICE int64_t pattern_sets() const { return shared ? heads : batch * heads; }
  HV_DEVICE const scalar_t* step_values(bool last) const { return last ? values : stored; }
  HV_DEVICE int64_t step_width(bool last) const { return last ? value_dim : dim; }
  // The patterns a query row scores against, and the rows a step of it averages.
  HV_DEVICE const scalar_t* row_keys(int64_t row) const {
    return stored + pattern_set(row / queries) * patterns * dim;
  }
  HV_DEVICE const scalar_t* row_step_values(int64_t row, bool last) const {
    return step_values(last) + pattern_set(row / queries) * patterns * step_width(last);
  }
};

// One warp per row of the flattened (batch * heads * Q) queries; the warp index is uniform over
// its lanes, so a warp past the end leaves as a whole and the shuffles of the others are full.
HV_DEVICE int64_t global_warp() {
  return (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
}

template <typename scalar_t, int kPerLane>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const Args<scalar_t> args, scalar_t* __restrict__ out) {
  using T = at::opmath_type<scalar_t>;
  const int64_t row = global_warp();
  if (row >= args.rows()) return;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t rows = args.rows(), d = args.dim, M = args.patterns;
  const scalar_t* keys = args.row_keys(row);

  LaneRow<T, kPerLane> state, next;
  state.load(args.query + row * d, d, lane);
  for (int64_t s = 1; s <= args.n_steps; ++s) {
    const bool last = s == args.n_steps;
    const int64_t width = args.step_width(last);
    const scalar_t* values = args.row_step_values(row, last);
    OnlineSoftmax<T> softmax;
    next.fill(T(0));
    for (int64_t first = 0; first < M; first += kWarpSize) {
      const int count = static_cast<int>(M - first < kWarpSize ? M - first : kWarpSize);
      T score = math::negative_infinity<T>();  // lane k: pattern first + k
      for (int k = 0; k < count; ++k) {
        const T dot = state.dot(keys + (first + k) * d, d, lane);
        if (lane == k) score = hopfield_score(dot, args.beta);
      }
      const T factor = online_softmax_advance(softmax, warp_max(score));
      const T weight = lane < count ? online_softmax_weight(score, online_softmax_shift(softmax))
                                    : T(0);
      softmax.sum += group_sum(weight, kWarpSize);
      next.scale(factor);
      for (int k = 0; k < count; ++k) {
        next.add_scaled(__shfl_sync(kFullWarp, weight, k), values + (first + k) * width, width,
                        lane);
      }
    }
    next.scale(online_softmax_normaliser(softmax));
    if (lane == 0) args.lse[(s - 1) * rows + row] = online_softmax_lse(softmax);
    if (last) {
      next.store(out + row * width, width, lane);
    } else {
      next.store(args.states + ((s - 1) * rows + row) * d, d, lane);
      state = next;
    }
  }
}

// ξ_s of a row as the backward pass reads it: the query, a saved state or the output.
template <typename scalar_t, int kPerLane>
HV_DEVICE void load_state(LaneRow<at::opmath_type<scalar_t>, kPerLane>& state,
                          const Args<scalar_t>& args, int64_t s, int64_t row, int lane) {
  if (s == 0) {
    state.load(args.query + row * args.dim, args.dim, lane);
  } else if (s == args.n_steps) {
    state.load(args.out + row * args.value_dim, args.value_dim, lane);
  } else {
    state.load(args.states + ((s - 1) * args.rows() + row) * args.dim, args.dim, lane);
  }
}

// dξ_s of a row: dout for the last step, else the one saved by backward_rows_kernel.
template <typename scalar_t, int kPerLane>
HV_DEVICE void load_state_grad(LaneRow<at::opmath_type<scalar_t>, kPerLane>& grad,
                               const Args<scalar_t>& args, int64_t s, int64_t row, int lane) {
  if (s == args.n_steps) {
    grad.load(args.dout + row * args.value_dim, args.value_dim, lane);
  } else {
    grad.load(args.grad_states + ((s - 1) * args.rows() + row) * args.dim, args.dim, lane);
  }
}

template <typename scalar_t, int kPerLane>
__global__ void __launch_bounds__(kThreads)
    backward_rows_kernel(const Args<scalar_t> args, scalar_t* __restrict__ dquery) {
  using T = at::opmath_type<scalar_t>;
  const int64_t row = global_warp();
  if (row >= args.rows()) return;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t rows = args.rows(), d = args.dim, M = args.patterns;
  const scalar_t* keys = args.row_keys(row);

  LaneRow<T, kPerLane> grad, prev, current, prev_grad;
  load_state_grad(grad, args, args.n_steps, row, lane);
  for (int64_t s = args.n_steps; s >= 1; --s) {
    const bool last = s == args.n_steps;
    const int64_t width = args.step_width(last);
    const scalar_t* values = args.row_step_values(row, last);
    load_state(prev, args, s - 1, row, lane);
    load_state(current, args, s, row, lane);
    const T row_dot = grad.dot(current);
    const T lse = args.lse[(s - 1) * rows + row];
    if (lane == 0) args.row_dots[(s - 1) * rows + row] = row_dot;
    prev_grad.fill(T(0));
    for (int64_t j = 0; j < M; ++j) {
      const T dot = prev.dot(keys + j * d, d, lane);
      const T p = softmax_probability(hopfield_score(dot, args.beta), lse);
      const T dp = grad.dot(values + j * width, width, lane);
      prev_grad.add_scaled(hopfield_dot_grad(p, dp, row_dot, args.beta), keys + j * d, d, lane);
    }
    grad = prev_grad;
    if (s > 1) grad.store(args.grad_states + ((s - 2) * rows + row) * d, d, lane);
  }
  grad.store(dquery + row * d, d, lane);
}

// One warp per stored pattern j of one set: its gradient rows over every query row that reads
// the set, in order (batch, step, query).
template <typename scalar_t, int kPerLane>
__global__ void __launch_bounds__(kThreads)
    backward_patterns_kernel(const Args<scalar_t> args, scalar_t* __restrict__ dstored,
                             scalar_t* __restrict__ dvalues) {
  using T = at::opmath_type<scalar_t>;
  const int64_t unit = global_warp();
  if (unit >= args.pattern_sets() * args.patterns) return;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t set = unit / args.patterns, j = unit % args.patterns;
  const int64_t rows = args.rows(), d = args.dim, dv = args.value_dim;
  const bool values_given = args.values != args.stored;

  LaneRow<T, kPerLane> key, value, key_grad, value_grad, prev, grad;
  key.load(args.stored + unit * d, d, lane);
  if (values_given) value.load(args.values + unit * dv, dv, lane);
  key_grad.fill(T(0));
  value_grad.fill(T(0));
  // The heads (b * heads + h) that read this set: one, or the head h of every batch entry.
  const int64_t readers = args.shared ? args.batch : 1;
  for (int64_t reader = 0; reader < readers; ++reader) {
    const int64_t head = args.shared ? reader * args.heads + set : set;
    for (int64_t s = 1; s <= args.n_steps; ++s) {
      const bool into_values = s == args.n_steps && values_given;
      for (int64_t q = 0; q < args.queries; ++q) {
        const int64_t row = head * args.queries + q;
        load_state(prev, args, s - 1, row, lane);
        load_state_grad(grad, args, s, row, lane);
        const T p = softmax_probability(hopfield_score(prev.dot(key), args.beta),
                                        args.lse[(s - 1) * rows + row]);
        const T dp = grad.dot(into_values ? value : key);
        const T row_dot = args.row_dots[(s - 1) * rows + row];
        key_grad.add_scaled(hopfield_dot_grad(p, dp, row_dot, args.beta), prev);
        (into_values ? value_grad : key_grad).add_scaled(p, grad);
      }
    }
  }
  key_grad.store(dstored + unit * d, d, lane);
  if (values_given) value_grad.store(dvalues + unit * dv, dv, lane);
}

// Calls body(std::integral_constant<int, P>) with the fewest features per lane P ∈ {1, 2, 4, 8}
// that hold `width` (≤ kHopfieldMaxDim = 8 * 32).
template <typename Body>
void with_per_lane(int64_t width, Body&& body) {
  static_assert(kHopfieldMaxDim == 8 * kWarpSize, "per-lane slots cover kHopfieldMaxDim");
  if (width <= 1 * kWarpSize) return body(std::integral_constant<int, 1>{});
  if (width <= 2 * kWarpSize) return body(std::integral_constant<int, 2>{});
  if (width <= 4 * kWarpSize) return body(std::integral_constant<int, 4>{});
  return body(std::integral_constant<int, 8>{});
}

int64_t blocks_for_warps(int64_t warps) {
  const int64_t blocks = (warps + kWarpsPerBlock - 1) / kWarpsPerBlock;
  TORCH_CHECK(blocks <= INT32_MAX, "hopfield_retrieval: too many rows for one launch (", warps,
              ")");
  return blocks;
}

template <typename scalar_t>
Args<scalar_t> make_args(const RetrievalInputs& in) {
  Args<scalar_t> args{};
  args.query = in.query.data_ptr<scalar_t>();
  args.stored = in.stored.data_ptr<scalar_t>();
  args.values = in.values_given() ? in.values.data_ptr<scalar_t>() : args.stored;
  args.batch = in.batch;
  args.heads = in.heads;
  args.queries = in.queries;
  args.patterns = in.patterns;
  args.dim = in.dim;
  args.value_dim = in.value_dim;
  args.n_steps = in.n_steps;
  args.beta = static_cast<at::opmath_type<scalar_t>>(in.beta);
  args.shared = in.shared;
  return args;
}

ForwardResult forward_cuda(const RetrievalInputs& in) {
  const c10::cuda::CUDAGuard guard(in.query.device());
  auto [out, states, lse, probabilities] = empty_forward_outputs(in);  // probabilities: empty
  if (out.numel() == 0) return {out, states, lse, probabilities};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.query.scalar_type(),
                                  "hopfield_retrieval_fwd_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    Args<scalar_t> args = make_args<scalar_t>(in);
    args.states = states.data_ptr<T>();
    args.lse = lse.data_ptr<T>();
    const int64_t blocks = blocks_for_warps(out.numel() / in.value_dim);
    with_per_lane(std::max(in.dim, in.value_dim), [&](auto per_lane) {
      forward_kernel<scalar_t, decltype(per_lane)::value>
          <<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(args,
                                                                      out.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {out, states, lse, probabilities};
}

BackwardResult backward_cuda(const RetrievalInputs& in, const at::Tensor& dout,
                             const at::Tensor& out, const at::Tensor& states,
                             const at::Tensor& lse, const at::Tensor& /*probabilities*/) {
  const c10::cuda::CUDAGuard guard(in.query.device());
  const int64_t rows = in.batch * in.heads * in.queries;
  at::Tensor dquery = at::empty_like(in.query);
  at::Tensor dstored = at::zeros_like(in.stored);
  at::Tensor dvalues = in.values_given() ? at::zeros_like(in.values)
                                         : at::empty({0}, in.query.options());
  if (rows == 0) return {dquery, dstored, dvalues};
  const auto acc = in.query.options().dtype(in.acc_dtype());
  at::Tensor grad_states = at::empty({in.n_steps - 1, rows, in.dim}, acc);
  at::Tensor row_dots = at::empty({in.n_steps, rows}, acc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.query.scalar_type(),
                                  "hopfield_retrieval_bwd_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    Args<scalar_t> args = make_args<scalar_t>(in);
    args.out = out.data_ptr<scalar_t>();
    args.dout = dout.data_ptr<scalar_t>();
    args.states = states.data_ptr<T>();
    args.lse = lse.data_ptr<T>();
    args.grad_states = grad_states.data_ptr<T>();
    args.row_dots = row_dots.data_ptr<T>();
    const auto stream = at::cuda::getCurrentCUDAStream();
    with_per_lane(std::max(in.dim, in.value_dim), [&](auto per_lane) {
      constexpr int kPerLane = decltype(per_lane)::value;
      backward_rows_kernel<scalar_t, kPerLane>
          <<<blocks_for_warps(rows), kThreads, 0, stream>>>(args, dquery.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      backward_patterns_kernel<scalar_t, kPerLane>
          <<<blocks_for_warps(in.pattern_sets() * in.patterns), kThreads, 0, stream>>>(
              args, dstored.data_ptr<scalar_t>(),
              in.values_given() ? dvalues.data_ptr<scalar_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {dquery, dstored, dvalues};
}

// The backward pass recomputes each probability where it needs it, on chip, and keeps none.
constexpr Kernels kCudaKernels{/*keeps_probabilities=*/false, &forward_cuda, &backward_cuda};

}  // namespace

TORCH_LIBRARY_IMPL(hvision, CUDA, m) {
  m.impl("hopfield_retrieval_fwd", &forward_op<kCudaKernels>);
  m.impl("hopfield_retrieval_bwd", &backward_op<kCudaKernels>);
}

}  // namespace hvision::hopfield_retrieval
