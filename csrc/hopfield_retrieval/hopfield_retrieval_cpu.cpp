// hopfield_retrieval CPU kernels. The forward pass splits the work over (batch, head, tile of
// query rows) with at::parallel_for; a tile keeps its state ξ in a scratch buffer through every
// step while the stored patterns stream past in tiles, with an online softmax. The products of a
// tile (scores = ξ Xᵀ, ξ' += P V, and the four or five of the backward pass) are row-major GEMM
// calls on the tile with no tensor in between (csrc/common/cpu_gemm.h), the softmax between them
// vector loops over the step math, compiled per instruction set (HV_CPU_DISPATCH). fp16/bf16
// rows are widened to float a tile at a time. Where the inputs ask for it
// (RetrievalInputs::keep_probabilities) the forward pass keeps every step's probabilities, which
// spares the backward pass one product a step.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "common/cpu_dispatch.h"
#include "common/cpu_gemm.h"
#include "common/cpu_softmax.h"
#include "common/cpu_widen.h"
#include "hopfield_retrieval/hopfield_retrieval.h"
#include "hopfield_retrieval/hopfield_retrieval_step.h"

namespace hvision::hopfield_retrieval {
namespace {

// Query rows per tile (at most; a head's rows are split into equal tiles) and stored patterns
// per tile: the tile's scores (256 x 256 floats, 256 KiB) stay in L2, and the tile products are
// large enough to run near the GEMM's peak. A ViT's 197 queries make one tile: against two of
// 128 rows, 3 steps forward + backward ran about 20 % faster on the brgemm path (AVX-512) and
// the same on the BLAS path (AVX2).
constexpr int64_t kQueryTile = 256;
constexpr int64_t kPatternTile = 256;
// With stored patterns shared across the batch, the backward pass splits the batch into at most
// this many blocks, one task per (block, head): each sums its dX/dV into a private buffer and
// the buffers are summed in a fixed order, so gradients do not depend on the thread count.
constexpr int64_t kMaxBatchBlocks = 16;

// Row-major C (m x n) = op(A) op(B), or C += op(A) op(B) when `accumulate`, where op(A) is A
// (m x k) or its transpose, stored (k x m), and op(B) is B (k x n) or its transpose, stored
// (n x k), as `transposed` says; the ld are row strides.
template <typename T>
void multiply(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
              T* c, int64_t ldc, bool accumulate, cpu::Transposed transposed = {}) {
  cpu::gemm(transposed, m, n, k, T(1), a, lda, b, ldb, accumulate ? T(1) : T(0), c, ldc);
}

// dst (cols x rows, row stride ld_dst) = the transpose of src (rows x cols, row stride ld_src),
// widened to T; in 16 x 16 blocks, so that both sides stay in cache lines already loaded, each
// block written a destination row at a time: a destination of 1024 columns puts the 16 rows of a
// block 4 KiB apart, in one L1 set, and writing them a column at a time evicted the lines it was
// filling (the keys' transpose took a fifth of the forward pass).
template <typename T, typename S>
void transpose(const S* src, int64_t rows, int64_t cols, int64_t ld_src, T* dst, int64_t ld_dst) {
  constexpr int64_t kBlock = 16;
  for (int64_t i0 = 0; i0 < rows; i0 += kBlock) {
    const int64_t i1 = std::min(i0 + kBlock, rows);
    for (int64_t j0 = 0; j0 < cols; j0 += kBlock) {
      const int64_t j1 = std::min(j0 + kBlock, cols);
      for (int64_t j = j0; j < j1; ++j) {
        for (int64_t i = i0; i < i1; ++i) dst[j * ld_dst + i] = static_cast<T>(src[i * ld_src + j]);
      }
    }
  }
}

// The rows [begin, end) of one of `tiles` equal splits of `count` rows.
struct Span {
  int64_t begin, end;
  int64_t size() const { return end - begin; }
};
inline Span split(int64_t count, int64_t tiles, int64_t tile) {
  return {tile * count / tiles, (tile + 1) * count / tiles};
}
inline int64_t num_query_tiles(int64_t queries) { return (queries + kQueryTile - 1) / kQueryTile; }

// ---------------------------------------------------------------------------------------------
// Softmax over a tile of scores (one row of `count` raw dot products per query row).
// ---------------------------------------------------------------------------------------------

// Backward, one query row against `count` stored patterns: the row's dot products in `scores`
// (null when the forward pass kept the probabilities) become its probabilities p, from its saved
// log-sum-exp; `probs` (== scores, or the kept row) then holds p, and `dot_grads` turns from
// dp = dξ·v into the gradients of the dot products.
template <typename T>
HV_INLINE void probabilities_and_dot_grads(T* scores, const T* probs, T* dot_grads, int64_t count,
                                           T beta, T lse, T row_dot) {
  if (scores != nullptr) {
#pragma omp simd
    for (int64_t j = 0; j < count; ++j) {
      scores[j] = softmax_probability(hopfield_score(scores[j], beta), lse);
    }
  }
#pragma omp simd
  for (int64_t j = 0; j < count; ++j) {
    dot_grads[j] = hopfield_dot_grad(probs[j], dot_grads[j], row_dot, beta);
  }
}

HV_CPU_DISPATCH(online_weights, cpu::online_softmax_absorb)
HV_CPU_DISPATCH(run_probabilities_and_dot_grads, probabilities_and_dot_grads)

template <typename T>
void scale_row(T* row, int64_t count, T factor) {
#pragma omp simd
  for (int64_t c = 0; c < count; ++c) row[c] *= factor;
}

template <typename T>
T dot_product(const T* a, const T* b, int64_t count) {
  T sum = 0;
  for (int64_t c = 0; c < count; ++c) sum += a[c] * b[c];
  return sum;
}

// ---------------------------------------------------------------------------------------------
// Raw views of the inputs
// ---------------------------------------------------------------------------------------------

// The stored patterns and values one (batch, head) reads.
template <typename scalar_t>
struct PatternSet {
  const scalar_t* keys;    // (M, d)
  const scalar_t* values;  // (M, dv); == keys when the values are the patterns
};

template <typename scalar_t>
PatternSet<scalar_t> pattern_set(const RetrievalInputs& in, int64_t b, int64_t h) {
  const int64_t set = in.pattern_set(b, h);
  const scalar_t* keys = in.stored.data_ptr<scalar_t>() + set * in.patterns * in.dim;
  const scalar_t* values =
      in.values_given() ? in.values.data_ptr<scalar_t>() + set * in.patterns * in.value_dim : keys;
  return {keys, values};
}

// Step s of an update reads the patterns as keys and, as values, the patterns again (s < n) or
// the values (s = n).
struct StepShape {
  bool last;
  int64_t width;  // of the step's output rows: d, or dv for the last step
};
inline StepShape step_shape(const RetrievalInputs& in, int64_t step) {
  const bool last = step == in.n_steps;
  return {last, last ? in.value_dim : in.dim};
}

// A tile of stored patterns in the accumulation type: keys (count, d), the same transposed
// (d, count) with row stride keys_t_stride, and the step's values (count, width); in per-thread
// buffers, except keys and values already of type T.
template <typename T>
struct PatternTile {
  const T* keys;
  const T* keys_t;
  int64_t keys_t_stride;
  const T* values;
  int64_t count;
};

// A set's keys are transposed whole, once for every step and query tile that reads them, up to
// this many values per thread (16 MiB of float); a larger set is transposed a tile at a time.
constexpr int64_t kMaxTransposedSet = int64_t{1} << 22;

template <typename T>
struct PatternBuffers {
  std::vector<T> keys, keys_t, values;
  const void* transposed_set = nullptr;  // the set whose keys keys_t holds whole, if any

  // Called before a task reads `set` (a thread's tasks are consecutive, so mostly of one set).
  template <typename scalar_t>
  void use_set(const RetrievalInputs& in, const PatternSet<scalar_t>& set) {
    if (transposed_set == set.keys || in.patterns * in.dim > kMaxTransposedSet) return;
    keys_t.resize(in.dim * in.patterns);
    transpose(set.keys, in.patterns, in.dim, in.dim, keys_t.data(), in.patterns);
    transposed_set = set.keys;
  }

  template <typename scalar_t>
  PatternTile<T> load(const RetrievalInputs& in, const PatternSet<scalar_t>& set, StepShape step,
                      int64_t first, int64_t count) {
    const T* key_rows = widen(set.keys + first * in.dim, count * in.dim, keys);
    const bool distinct_values = step.last && set.values != set.keys;
    const T* value_rows =
        distinct_values ? widen(set.values + first * in.value_dim, count * in.value_dim, values)
                        : key_rows;
    if (transposed_set == set.keys) {
      return {key_rows, keys_t.data() + first, in.patterns, value_rows, count};
    }
    keys_t.resize(in.dim * kPatternTile);
    transpose(key_rows, count, in.dim, in.dim, keys_t.data(), kPatternTile);
    return {key_rows, keys_t.data(), kPatternTile, value_rows, count};
  }
};

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------

template <typename T>
struct ForwardScratch {
  std::vector<T> state, next, scores;  // ξ (rows, d), ξ' (rows, max(d, dv)), (rows, kPatternTile)
  std::vector<OnlineSoftmax<T>> softmax;
  PatternBuffers<T> patterns;

  explicit ForwardScratch(const RetrievalInputs& in)
      : state(kQueryTile * in.dim),
        next(kQueryTile * std::max(in.dim, in.value_dim)),
        scores(kQueryTile * kPatternTile),
        softmax(kQueryTile) {}
};

// One step for a tile of `rows` query rows whose state is in scratch.state: scratch.next =
// softmax(β ξ Xᵀ) V (rows of step.width), and each row's log-sum-exp in `lse`, with an online
// softmax over the pattern tiles.
template <typename scalar_t, typename T>
void forward_step(const RetrievalInputs& in, const PatternSet<scalar_t>& set, StepShape step,
                  int64_t rows, ForwardScratch<T>& scratch, T* lse) {
  const T beta = static_cast<T>(in.beta);
  const int64_t width = step.width;
  T* next = scratch.next.data();
  T* scores = scratch.scores.data();
  std::fill_n(next, rows * width, T(0));
  std::fill_n(scratch.softmax.begin(), rows, OnlineSoftmax<T>{});
  for (int64_t first = 0; first < in.patterns; first += kPatternTile) {
    const PatternTile<T> tile =
        scratch.patterns.load(in, set, step, first, std::min(kPatternTile, in.patterns - first));
    multiply(rows, tile.count, in.dim, scratch.state.data(), in.dim, tile.keys_t,
             tile.keys_t_stride, scores, kPatternTile, false);
    for (int64_t r = 0; r < rows; ++r) {
      const T factor =
          online_weights(scratch.softmax[r], scores + r * kPatternTile, tile.count, beta);
      if (factor != T(1)) scale_row(next + r * width, width, factor);
    }
    multiply(rows, width, tile.count, scores, kPatternTile, tile.values, width, next, width, true);
  }
  for (int64_t r = 0; r < rows; ++r) {
    scale_row(next + r * width, width, online_softmax_normaliser(scratch.softmax[r]));
    lse[r] = online_softmax_lse(scratch.softmax[r]);
  }
}

// forward_step keeping the step's probabilities in `kept` (rows, M; row stride M): the scores of
// every pattern tile are formed there first, so that each row's softmax is exact in one pass over
// the row, with no rescaling, and then scratch.next = P V.
template <typename scalar_t, typename T>
void forward_step_keeping(const RetrievalInputs& in, const PatternSet<scalar_t>& set,
                          StepShape step, int64_t rows, ForwardScratch<T>& scratch, T* lse,
                          T* kept) {
  const T beta = static_cast<T>(in.beta);
  const int64_t M = in.patterns, width = step.width;
  const auto tile_at = [&](int64_t first) {
    return scratch.patterns.load(in, set, step, first, std::min(kPatternTile, M - first));
  };
  for (int64_t first = 0; first < M; first += kPatternTile) {
    const PatternTile<T> tile = tile_at(first);
    multiply(rows, tile.count, in.dim, scratch.state.data(), in.dim, tile.keys_t,
             tile.keys_t_stride, kept + first, M, false);
  }
  for (int64_t r = 0; r < rows; ++r) {
    OnlineSoftmax<T> row;
    online_weights(row, kept + r * M, M, beta);
    scale_row(kept + r * M, M, online_softmax_normaliser(row));
    lse[r] = online_softmax_lse(row);
  }
  for (int64_t first = 0; first < M; first += kPatternTile) {
    const PatternTile<T> tile = tile_at(first);
    multiply(rows, width, tile.count, kept + first, M, tile.values, width, scratch.next.data(),
             width, first > 0);
  }
}

template <typename scalar_t>
void forward_kernel(const RetrievalInputs& in, at::Tensor& out, at::Tensor& states,
                    at::Tensor& lse, at::Tensor& probabilities) {
  using T = at::opmath_type<scalar_t>;
  const int64_t tiles = num_query_tiles(in.queries);
  const int64_t heads_total = in.batch * in.heads;
  const int64_t Q = in.queries, d = in.dim, dv = in.value_dim;
  at::parallel_for(0, heads_total * tiles, 1, [&](int64_t begin, int64_t end) {
    ForwardScratch<T> scratch(in);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t head = task / tiles;  // b * heads + h
      const Span span = split(Q, tiles, task % tiles);
      const int64_t rows = span.size();
      const auto set = pattern_set<scalar_t>(in, head / in.heads, head % in.heads);
      scratch.patterns.use_set(in, set);
      const int64_t row0 = head * Q + span.begin;  // first row in (batch * heads * Q)
      std::copy_n(in.query.data_ptr<scalar_t>() + row0 * d, rows * d, scratch.state.begin());
      for (int64_t s = 1; s <= in.n_steps; ++s) {
        const StepShape step = step_shape(in, s);
        const int64_t step_row0 = (s - 1) * heads_total * Q + row0;
        T* step_lse = lse.data_ptr<T>() + step_row0;
        if (in.keep_probabilities) {
          forward_step_keeping(in, set, step, rows, scratch, step_lse,
                               probabilities.data_ptr<T>() + step_row0 * in.patterns);
        } else {
          forward_step(in, set, step, rows, scratch, step_lse);
        }
        if (step.last) break;
        std::copy_n(scratch.next.begin(), rows * d, scratch.state.begin());
        std::copy_n(scratch.next.begin(), rows * d,
                    states.data_ptr<T>() + ((s - 1) * heads_total * Q + row0) * d);
      }
      std::copy_n(scratch.next.begin(), rows * dv, out.data_ptr<scalar_t>() + row0 * dv);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Backward: for each tile of query rows, the steps in reverse. Step s takes its probabilities
// P = softmax(β ξ_{s-1} Xᵀ) a pattern tile at a time, kept by the forward pass or recomputed from
// the scores ξ_{s-1} Xᵀ and lse_s, and from dξ_s (dout for the last step) forms dP = dξ_s Vᵀ and
// the gradient dS of the dot products. It adds Pᵀ dξ_s to the gradient of its values (dV, or dX
// for s < n), dSᵀ ξ_{s-1} to dX and dS X to dξ_{s-1}. Every tile is row-major, (query rows,
// patterns), and a kept one is read in place. Where a step's values are its keys (every step but
// the last one with separate values) and P is recomputed, the products of each kind are one
// product of twice the rows: (S ; dP) = (ξ_{s-1} ; dξ_s) Xᵀ and
// dX += (P ; dS)ᵀ (dξ_s ; ξ_{s-1}), from the rows dξ_s ; ξ_{s-1} ; dξ_s stacked once a step.
// ---------------------------------------------------------------------------------------------

template <typename T>
struct BackwardScratch {
  std::vector<T> prev, current;    // ξ_{s-1}, ξ_s (when widened): (rows, ·)
  std::vector<T> grad, prev_grad;  // dξ_s, then dξ_{s-1} in the other: (rows, ·)
  std::vector<T> stacked;          // dξ_s ; ξ_{s-1} ; dξ_s: (3 rows, d)
  std::vector<T> products;         // P ; dS of a pattern tile: (2 rows, kPatternTile)
  std::vector<T> row_dots;         // dξ_s·ξ_s
  PatternBuffers<T> patterns;

  explicit BackwardScratch(const RetrievalInputs& in)
      : prev(kQueryTile * in.dim),
        current(kQueryTile * std::max(in.dim, in.value_dim)),
        grad(kQueryTile * std::max(in.dim, in.value_dim)),
        prev_grad(grad.size()),
        stacked(3 * kQueryTile * in.dim),
        products(2 * kQueryTile * kPatternTile),
        row_dots(kQueryTile) {}
};

// Where one (batch block, head) task adds its pattern gradients: (M, d) and (M, dv) rows.
template <typename T>
struct PatternGrads {
  T* keys;
  T* values;  // == keys when the values are the patterns
};

// The saved forward rows of one tile: ξ_{s} for s = 0 … n (query, states, out), lse_s and, when
// the forward pass kept them, the probabilities P_s.
template <typename scalar_t, typename T>
struct SavedRows {
  const RetrievalInputs& in;
  const scalar_t *query, *out;
  const T *states, *lse, *probabilities;  // probabilities: null unless kept
  int64_t row0, rows;

  int64_t step_offset(int64_t s) const { return (s * in.batch * in.heads * in.queries + row0); }
  // ξ_s (rows, width) into `buffer` (or in place when already of type T).
  const T* state(int64_t s, std::vector<T>& buffer) const {
    if (s == 0) return widen(query + row0 * in.dim, rows * in.dim, buffer);
    if (s == in.n_steps) return widen(out + row0 * in.value_dim, rows * in.value_dim, buffer);
    return states + step_offset(s - 1) * in.dim;
  }
  const T* step_lse(int64_t s) const { return lse + step_offset(s - 1); }
  // P_s (rows, M), or null when recomputed.
  const T* step_probabilities(int64_t s) const {
    return probabilities ? probabilities + step_offset(s - 1) * in.patterns : nullptr;
  }
};

template <typename scalar_t, typename T>
void backward_step(const RetrievalInputs& in, const PatternSet<scalar_t>& set,
                   const SavedRows<scalar_t, T>& saved, int64_t s, BackwardScratch<T>& scratch,
                   const PatternGrads<T>& grads) {
  const StepShape step = step_shape(in, s);
  const int64_t rows = saved.rows, d = in.dim, width = step.width;
  const T beta = static_cast<T>(in.beta);
  const T* prev = saved.state(s - 1, scratch.prev);
  const T* current = saved.state(s, scratch.current);
  const T* grad = scratch.grad.data();
  const T* lse = saved.step_lse(s);
  const T* kept = saved.step_probabilities(s);
  for (int64_t r = 0; r < rows; ++r) {
    scratch.row_dots[r] = dot_product(grad + r * width, current + r * width, width);
  }
  const bool values_are_keys = !step.last || !in.values_given();
  const bool stack = values_are_keys && kept == nullptr;  // (a kept P is not next to dS)
  T* stacked = scratch.stacked.data();
  if (stack) {
    std::copy_n(grad, rows * d, stacked);
    std::copy_n(prev, rows * d, stacked + rows * d);
    std::copy_n(grad, rows * d, stacked + 2 * rows * d);
  }
  T* scores = scratch.products.data();  // then P, unless kept
  T* dot_grads = scores + rows * kPatternTile;
  T* prev_grad = scratch.prev_grad.data();
  std::fill_n(prev_grad, rows * d, T(0));
  T* value_grads = step.last ? grads.values : grads.keys;
  for (int64_t first = 0; first < in.patterns; first += kPatternTile) {
    const PatternTile<T> tile =
        scratch.patterns.load(in, set, step, first, std::min(kPatternTile, in.patterns - first));
    const int64_t n = tile.count;
    if (stack) {
      multiply(2 * rows, n, d, stacked + rows * d, d, tile.keys_t, tile.keys_t_stride, scores,
               kPatternTile, false);
    } else {
      if (kept == nullptr) {
        multiply(rows, n, d, prev, d, tile.keys_t, tile.keys_t_stride, scores, kPatternTile,
                 false);
      }
      multiply(rows, n, width, grad, width, values_are_keys ? tile.keys_t : tile.values,
               values_are_keys ? tile.keys_t_stride : width, dot_grads, kPatternTile, false,
               {.b = !values_are_keys});
    }
    // The tile's probabilities: (rows, n) with row stride ld.
    const T* probs = kept ? kept + first : scores;
    const int64_t ld = kept ? in.patterns : kPatternTile;
    for (int64_t r = 0; r < rows; ++r) {
      run_probabilities_and_dot_grads(kept ? nullptr : scores + r * kPatternTile, probs + r * ld,
                                      dot_grads + r * kPatternTile, n, beta, lse[r],
                                      scratch.row_dots[r]);
    }
    if (stack) {
      multiply(n, d, 2 * rows, scores, kPatternTile, stacked, d, grads.keys + first * d, d, true,
               {.a = true});
    } else {
      multiply(n, width, rows, probs, ld, grad, width, value_grads + first * width, width, true,
               {.a = true});
      multiply(n, d, rows, dot_grads, kPatternTile, prev, d, grads.keys + first * d, d, true,
               {.a = true});
    }
    multiply(rows, d, n, dot_grads, kPatternTile, tile.keys, d, prev_grad, d, true);
  }
  // dξ_{s-1} replaces dξ_s, which no product reads any more.
  scratch.grad.swap(scratch.prev_grad);
}

template <typename scalar_t>
void backward_kernel(const RetrievalInputs& in, const at::Tensor& dout, const at::Tensor& out,
                     const at::Tensor& states, const at::Tensor& lse,
                     const at::Tensor& probabilities, at::Tensor& dquery, at::Tensor& dkeys,
                     at::Tensor& dvalues, int64_t blocks) {
  using T = at::opmath_type<scalar_t>;
  const int64_t tiles = num_query_tiles(in.queries);
  const int64_t Q = in.queries, d = in.dim, dv = in.value_dim;
  const int64_t M = in.patterns;
  // Per-batch patterns: block = batch entry. Shared: block = a fixed split of the batch.
  at::parallel_for(0, blocks * in.heads, 1, [&](int64_t begin, int64_t end) {
    BackwardScratch<T> scratch(in);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t block = task / in.heads, h = task % in.heads;
      T* key_grads = dkeys.data_ptr<T>() + task * M * d;
      const PatternGrads<T> grads{
          key_grads, in.values_given() ? dvalues.data_ptr<T>() + task * M * dv : key_grads};
      const Span batches = split(in.batch, blocks, block);
      for (int64_t b = batches.begin; b < batches.end; ++b) {
        const auto set = pattern_set<scalar_t>(in, b, h);
        scratch.patterns.use_set(in, set);
        for (int64_t tile = 0; tile < tiles; ++tile) {
          const Span span = split(Q, tiles, tile);
          const int64_t row0 = (b * in.heads + h) * Q + span.begin;
          const SavedRows<scalar_t, T> saved{
              in,
              in.query.data_ptr<scalar_t>(),
              out.data_ptr<scalar_t>(),
              states.data_ptr<T>(),
              lse.data_ptr<T>(),
              in.keep_probabilities ? probabilities.data_ptr<T>() : nullptr,
              row0,
              span.size()};
          std::copy_n(dout.data_ptr<scalar_t>() + row0 * dv, span.size() * dv,
                      scratch.grad.begin());
          for (int64_t s = in.n_steps; s >= 1; --s) backward_step(in, set, saved, s, scratch, grads);
          std::copy_n(scratch.grad.begin(), span.size() * d,
                      dquery.data_ptr<scalar_t>() + row0 * d);
        }
      }
    }
  });
}

// A pattern gradient from its (blocks, heads, M, width) partials: per-batch as is, shared summed
// over the blocks in order; in the input dtype.
at::Tensor finish_pattern_grad(const at::Tensor& partials, const RetrievalInputs& in) {
  if (!in.shared) return partials.to(in.query.scalar_type());
  at::Tensor total = partials[0].clone();
  for (int64_t block = 1; block < partials.size(0); ++block) total.add_(partials[block]);
  return total.to(in.query.scalar_type());
}

// Asks the OS to back the 2 MiB-aligned inside of an allocation not yet written with huge
// pages. The kept probabilities are tens of MiB per call, written once: in 4 KiB pages their
// first-touch page faults took longer than the product that keeping them saves.
void advise_huge_pages(const at::Tensor& t) {
#if defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t{1} << 21;
  const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = (begin + t.nbytes()) & ~(kHugePage - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
}

ForwardResult forward_cpu(const RetrievalInputs& in) {
  auto [out, states, lse, probabilities] = empty_forward_outputs(in);
  if (in.keep_probabilities) advise_huge_pages(probabilities);
  if (out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.query.scalar_type(),
                                    "hopfield_retrieval_fwd_cpu", [&] {
                                      forward_kernel<scalar_t>(in, out, states, lse,
                                                               probabilities);
                                    });
  }
  return {out, states, lse, probabilities};
}

BackwardResult backward_cpu(const RetrievalInputs& in, const at::Tensor& dout,
                            const at::Tensor& out, const at::Tensor& states,
                            const at::Tensor& lse, const at::Tensor& probabilities) {
  const int64_t blocks = in.shared ? std::clamp<int64_t>(in.batch, 1, kMaxBatchBlocks) : in.batch;
  const auto acc = in.query.options().dtype(in.acc_dtype());
  at::Tensor dquery = at::empty_like(in.query);
  at::Tensor dkeys = at::zeros({blocks, in.heads, in.patterns, in.dim}, acc);
  at::Tensor dvalues = in.values_given()
                           ? at::zeros({blocks, in.heads, in.patterns, in.value_dim}, acc)
                           : at::empty({0}, acc);
  if (in.query.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.query.scalar_type(),
                                    "hopfield_retrieval_bwd_cpu", [&] {
                                      backward_kernel<scalar_t>(in, dout, out, states, lse,
                                                                probabilities, dquery, dkeys,
                                                                dvalues, blocks);
                                    });
  }
  return {dquery, finish_pattern_grad(dkeys, in).reshape(in.stored.sizes()),
          in.values_given() ? finish_pattern_grad(dvalues, in).reshape(in.values.sizes())
                            : at::empty({0}, in.query.options())};
}

constexpr Kernels kCpuKernels{/*keeps_probabilities=*/true, &forward_cpu, &backward_cpu};

}  // namespace

TORCH_LIBRARY_IMPL(hvision, CPU, m) {
  m.impl("hopfield_retrieval_fwd", &forward_op<kCpuKernels>);
  m.impl("hopfield_retrieval_bwd", &backward_op<kCpuKernels>);
}

}  // namespace hvision::hopfield_retrieval
