// sparse_attention CPU kernels. Flash-style: a tile of major rows (queries in the forward pass
// and for dq, keys for dk/dv) meets the minor rows its pattern reaches a tile at a time, with
// tile GEMMs (csrc/common/cpu_gemm.h) for the global and block segments and vector loops for
// each row's strided extras. Work is split over (batch, head, major tile) with at::parallel_for;
// every output row is owned by one tile, so results do not depend on the thread count. Inputs in
// fp16/bf16 are widened to float once; everything accumulates in float (double for float64).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "common/cpu_dispatch.h"
#include "common/cpu_gemm.h"
#include "common/cpu_softmax.h"
#include "sparse_attention/sparse_attention.h"
#include "sparse_attention/sparse_attention_step.h"

namespace hvision::sparse_attention {
namespace {

// Rows of a major tile and columns of a minor tile: a 64 x 256 score tile stays in L2, the
// products are large enough for BLAS to run near its peak, and the wasted corners of a band
// tile (the pairs beyond the window) stay a fraction of it.
constexpr int64_t kMajorTile = 64;
constexpr int64_t kMinorTile = 256;

template <typename T>
void matmul_nt(int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b,
               int64_t ldb, T beta, T* c, int64_t ldc) {
  cpu::gemm({.b = true}, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

template <typename T>
void matmul_nn(int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b,
               int64_t ldb, T beta, T* c, int64_t ldc) {
  cpu::gemm({}, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

template <typename T>
HV_INLINE T dot(const T* x, const T* y, int64_t n) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += x[i] * y[i];
  return sum;
}

// y += alpha x
template <typename T>
HV_INLINE void axpy(T* y, T alpha, const T* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

template <typename T>
HV_INLINE void scale_row(T* y, T factor, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] *= factor;
}

// Sets the scores of the pairs the pattern forbids to -inf in a (rows x n) tile at (a0, b0).
template <typename T>
HV_INLINE void mask_tile(const SparsePattern& p, int64_t a0, int64_t rows, int64_t b0, int64_t n,
                         T* scores) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t a = a0 + r;
    const MinorRange certain = sparse_certain_range(p, a);
    const int64_t lo = sparse_min(n, sparse_max(0, certain.begin - b0));
    const int64_t hi = sparse_max(lo, sparse_min(n, certain.end - b0));
    T* row = scores + r * n;
    for (int64_t c = 0; c < n; ++c) {
      if (c == lo) c = hi;
      if (c < n && !sparse_allows(p, a, b0 + c)) row[c] = math::negative_infinity<T>();
    }
  }
}

// Per-thread buffers: a score tile, a second tile for the backward pass and the forward
// accumulators.
template <typename T>
struct Scratch {
  std::vector<T> scores, grads, acc;
  explicit Scratch(int64_t head_dim)
      : scores(kMajorTile * kMinorTile), grads(kMajorTile * kMinorTile), acc(kMajorTile * head_dim) {}
};

// One (batch, head) of the forward pass, rows (L, head_dim) in the accumulation type.
template <typename T>
struct ForwardHead {
  const T *q, *k, *v;
  T *out, *lse;
};

template <typename T>
HV_INLINE void forward_tile(const SparsePattern& p, T scale, int64_t D, const ForwardHead<T>& h,
                            MinorRange tile, Scratch<T>& s) {
  const int64_t a0 = tile.begin, rows = tile.size();
  OnlineSoftmax<T> state[kMajorTile];
  T* acc = s.acc.data();
  std::fill(acc, acc + rows * D, T(0));
  for (SparseMinorTiles t(p, a0, tile.end, kMinorTile); t.next();) {
    const int64_t b0 = t.begin, n = t.size;
    T* scores = s.scores.data();
    matmul_nt(rows, n, D, scale, h.q + a0 * D, D, h.k + b0 * D, D, T(0), scores, n);
    mask_tile(p, a0, rows, b0, n, scores);
    for (int64_t r = 0; r < rows; ++r) {
      scale_row(acc + r * D, cpu::online_softmax_absorb(state[r], scores + r * n, n, T(1)), D);
    }
    matmul_nn(rows, D, n, T(1), scores, n, h.v + b0 * D, D, T(1), acc, D);
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t a = a0 + r;
    const T* q = h.q + a * D;
    T* acc_row = acc + r * D;
    for (SparseStridedRuns run(p, a, a0, tile.end, kMinorTile); run.next();) {
      const int64_t first = run.first, count = run.count;
      T* scores = s.scores.data();
      for (int64_t u = 0; u < count; ++u) scores[u] = scale * dot(q, h.k + (first + u * p.stride) * D, D);
      scale_row(acc_row, cpu::online_softmax_absorb(state[r], scores, count, T(1)), D);
      for (int64_t u = 0; u < count; ++u) axpy(acc_row, scores[u], h.v + (first + u * p.stride) * D, D);
    }
    T* out = h.out + a * D;
    const T normaliser = online_softmax_normaliser(state[r]);
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) out[d] = acc_row[d] * normaliser;
    h.lse[a] = online_softmax_lse(state[r]);
  }
}

// One (batch, head) of a backward pass, walked from the major side: x · y^T are the scores,
// z · w^T the probability gradients; dx += dS · y, and dw_major += P · w when given (dv in the
// key-major pass). The saved lse and row_dot (dout · out) belong to the query of each pair:
// the major row in the query-major pass, the minor row in the key-major pass.
template <typename T>
struct GradHead {
  const T *x, *y, *z, *w;
  const T *lse, *row_dot;
  T *dx, *dw_major;
};

// Turns a tile of scores into probabilities (in `scores`) and dS = scale · p (dp - row_dot) (in
// `grads`, which holds dp on entry).
template <typename T>
HV_INLINE void probabilities_and_score_grads(const SparsePattern& p, T scale, const GradHead<T>& h,
                                             int64_t a0, int64_t rows, int64_t b0, int64_t n,
                                             T* scores, T* grads) {
  for (int64_t r = 0; r < rows; ++r) {
    T* prob = scores + r * n;
    T* grad = grads + r * n;
    if (p.transposed) {
#pragma omp simd
      for (int64_t c = 0; c < n; ++c) {
        prob[c] = softmax_probability(prob[c], h.lse[b0 + c]);
        grad[c] = scale * softmax_score_grad(prob[c], grad[c], h.row_dot[b0 + c]);
      }
    } else {
      const T lse = h.lse[a0 + r], row_dot = h.row_dot[a0 + r];
#pragma omp simd
      for (int64_t c = 0; c < n; ++c) {
        prob[c] = softmax_probability(prob[c], lse);
        grad[c] = scale * softmax_score_grad(prob[c], grad[c], row_dot);
      }
    }
  }
}

template <typename T>
HV_INLINE void backward_tile(const SparsePattern& p, T scale, int64_t D, const GradHead<T>& h,
                             MinorRange tile, Scratch<T>& s) {
  const int64_t a0 = tile.begin, rows = tile.size();
  for (SparseMinorTiles t(p, a0, tile.end, kMinorTile); t.next();) {
    const int64_t b0 = t.begin, n = t.size;
    T* scores = s.scores.data();
    T* grads = s.grads.data();
    matmul_nt(rows, n, D, scale, h.x + a0 * D, D, h.y + b0 * D, D, T(0), scores, n);
    mask_tile(p, a0, rows, b0, n, scores);
    matmul_nt(rows, n, D, T(1), h.z + a0 * D, D, h.w + b0 * D, D, T(0), grads, n);
    probabilities_and_score_grads(p, scale, h, a0, rows, b0, n, scores, grads);
    matmul_nn(rows, D, n, T(1), grads, n, h.y + b0 * D, D, T(1), h.dx + a0 * D, D);
    if (h.dw_major) matmul_nn(rows, D, n, T(1), scores, n, h.w + b0 * D, D, T(1), h.dw_major + a0 * D, D);
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t a = a0 + r;
    for (SparseStridedRuns run(p, a, a0, tile.end, kMinorTile); run.next();) {
      for (int64_t u = 0; u < run.count; ++u) {
        const int64_t b = run.first + u * p.stride;
        const int64_t query = p.transposed ? b : a;
        const T prob = softmax_probability(scale * dot(h.x + a * D, h.y + b * D, D), h.lse[query]);
        const T d_prob = dot(h.z + a * D, h.w + b * D, D);
        axpy(h.dx + a * D, scale * softmax_score_grad(prob, d_prob, h.row_dot[query]), h.y + b * D, D);
        if (h.dw_major) axpy(h.dw_major + a * D, prob, h.w + b * D, D);
      }
    }
  }
}

HV_CPU_DISPATCH(run_forward_tile, forward_tile)
HV_CPU_DISPATCH(run_backward_tile, backward_tile)

// Runs tile_fn(head, tile, scratch) for every major tile of every (batch, head), in parallel.
template <typename T, typename TileFn>
void for_each_tile(const AttentionInputs& in, const SparsePattern& p, TileFn&& tile_fn) {
  const SparseTiling tiling(p, kMajorTile);
  const int64_t heads = in.batch * in.heads;
  at::parallel_for(0, heads * tiling.tiles, 1, [&](int64_t begin, int64_t end) {
    Scratch<T> scratch(in.head_dim);
    for (int64_t index = begin; index < end; ++index) {
      tile_fn(index / tiling.tiles, tiling.tile_range(index % tiling.tiles), scratch);
    }
  });
}

template <typename T>
void forward_kernel(const AttentionInputs& in, const at::Tensor& q, const at::Tensor& k,
                    const at::Tensor& v, at::Tensor& out, at::Tensor& lse) {
  const int64_t L = in.length, D = in.head_dim;
  const T scale = static_cast<T>(in.scale);
  for_each_tile<T>(in, in.pattern, [&](int64_t head, MinorRange tile, Scratch<T>& s) {
    const int64_t offset = head * L * D;
    const ForwardHead<T> h{q.const_data_ptr<T>() + offset, k.const_data_ptr<T>() + offset,
                           v.const_data_ptr<T>() + offset, out.data_ptr<T>() + offset,
                           lse.data_ptr<T>() + head * L};
    run_forward_tile(in.pattern, scale, D, h, tile, s);
  });
}

struct GradTensors {
  at::Tensor q, k, v, dout, lse, row_dot, dq, dk, dv;
};

template <typename T>
void backward_kernel(const AttentionInputs& in, const GradTensors& g) {
  const int64_t L = in.length, D = in.head_dim;
  const T scale = static_cast<T>(in.scale);
  auto ptr = [&](const at::Tensor& t, int64_t head) { return t.const_data_ptr<T>() + head * L * D; };
  auto grad_ptr = [&](const at::Tensor& t, int64_t head) { return t.data_ptr<T>() + head * L * D; };
  auto stats = [&](const at::Tensor& t, int64_t head) { return t.const_data_ptr<T>() + head * L; };
  // dq: query-major, scores q · k^T, dp = dout · v^T.
  for_each_tile<T>(in, in.pattern, [&](int64_t head, MinorRange tile, Scratch<T>& s) {
    const GradHead<T> h{ptr(g.q, head), ptr(g.k, head), ptr(g.dout, head), ptr(g.v, head),
                        stats(g.lse, head), stats(g.row_dot, head), grad_ptr(g.dq, head), nullptr};
    run_backward_tile(in.pattern, scale, D, h, tile, s);
  });
  // dk, dv: key-major, scores k · q^T, dp = v · dout^T, dv += p · dout.
  const SparsePattern transposed = in.transposed_pattern();
  for_each_tile<T>(in, transposed, [&](int64_t head, MinorRange tile, Scratch<T>& s) {
    const GradHead<T> h{ptr(g.k, head), ptr(g.q, head), ptr(g.v, head), ptr(g.dout, head),
                        stats(g.lse, head), stats(g.row_dot, head), grad_ptr(g.dk, head),
                        grad_ptr(g.dv, head)};
    run_backward_tile(transposed, scale, D, h, tile, s);
  });
}

ForwardResult forward_cpu(const AttentionInputs& in) {
  const at::ScalarType acc = in.acc_dtype();
  const at::Tensor q = in.q.to(acc), k = in.k.to(acc), v = in.v.to(acc);
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({in.batch, in.heads, in.length}, q.options());
  if (q.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(acc, "sparse_attention_fwd_cpu",
                               [&] { forward_kernel<scalar_t>(in, q, k, v, out, lse); });
  }
  return {out.to(in.q.scalar_type()), lse};
}

BackwardResult backward_cpu(const AttentionInputs& in, const SavedForward& saved) {
  const at::ScalarType acc = in.acc_dtype();
  GradTensors g;
  g.q = in.q.to(acc);
  g.k = in.k.to(acc);
  g.v = in.v.to(acc);
  g.dout = saved.dout.to(acc);
  g.lse = saved.lse;
  // Σ_j p_ij dp_ij of each query row, which the softmax backward subtracts.
  g.row_dot = (g.dout * saved.out.to(acc)).sum(-1);
  g.dq = at::zeros_like(g.q);
  g.dk = at::zeros_like(g.k);
  g.dv = at::zeros_like(g.v);
  if (g.q.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(acc, "sparse_attention_bwd_cpu", [&] { backward_kernel<scalar_t>(in, g); });
  }
  const at::ScalarType dtype = in.q.scalar_type();
  return {g.dq.to(dtype), g.dk.to(dtype), g.dv.to(dtype)};
}

constexpr Kernels kCpuKernels{&forward_cpu, &backward_cpu};

}  // namespace

TORCH_LIBRARY_IMPL(hvision, CPU, m) {
  m.impl("sparse_attention_fwd", &forward_op<kCpuKernels>);
  m.impl("sparse_attention_bwd", &backward_op<kCpuKernels>);
}

}  // namespace hvision::sparse_attention
