// hopfield_retrieval: argument validation and output allocation shared by the CPU and CUDA
// kernels.
#include "hopfield_retrieval/hopfield_retrieval.h"

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "common/checks.h"
#include "hopfield_retrieval/hopfield_retrieval_step.h"

namespace hvision::hopfield_retrieval {
namespace {

constexpr const char* kOp = "hopfield_retrieval";

void check_feature_size(const char* what, int64_t size) {
  TORCH_CHECK_VALUE(size >= 1 && size <= kHopfieldMaxDim, kOp, ": expected ", what, " in [1, ",
                    kHopfieldMaxDim, "], got ", size);
}

// stored or values: (batch, heads, M, width) or, shared across the batch, (heads, M, width).
// `width` < 0 leaves the last dimension free.
void check_patterns(const char* name, const at::Tensor& t, const RetrievalInputs& in,
                    int64_t width) {
  check_same_device(kOp, name, t, in.query, "query");
  check_dtype(kOp, name, t, {in.query.scalar_type()});
  const int64_t last = width < 0 ? t.size(-1) : width;
  if (in.shared) {
    check_shape(kOp, name, t, {in.heads, in.patterns, last}, "(heads, M, d) shared across the batch");
  } else {
    check_shape(kOp, name, t, {in.batch, in.heads, in.patterns, last}, "(batch, heads, M, d)");
  }
}

// The shape of the kept probabilities.
std::vector<int64_t> probabilities_shape(const RetrievalInputs& in) {
  return {in.n_steps, in.batch, in.heads, in.queries, in.patterns};
}

}  // namespace

RetrievalInputs check_inputs(const at::Tensor& query, const at::Tensor& stored,
                             const std::optional<at::Tensor>& values, double beta,
                             int64_t n_steps) {
  TORCH_CHECK_VALUE(query.dim() == 4, kOp, ": expected query of shape (batch, heads, Q, d), got ",
                    shape_string(query.sizes()));
  check_dtype(kOp, "query", query, {at::kFloat, at::kHalf, at::kBFloat16, at::kDouble});
  TORCH_CHECK_VALUE(stored.dim() == 3 || stored.dim() == 4, kOp,
                    ": expected stored of shape (batch, heads, M, d) or (heads, M, d), got ",
                    shape_string(stored.sizes()));
  TORCH_CHECK_VALUE(n_steps >= 1 && n_steps <= kHopfieldMaxSteps, kOp, ": expected n_steps in [1, ",
                    kHopfieldMaxSteps, "], got ", n_steps);
  TORCH_CHECK_VALUE(std::isfinite(beta) && beta > 0, kOp, ": expected beta > 0 and finite, got ",
                    beta);

  RetrievalInputs in;
  in.query = query;
  in.batch = query.size(0);
  in.heads = query.size(1);
  in.queries = query.size(2);
  in.dim = query.size(3);
  in.patterns = stored.size(-2);
  in.shared = stored.dim() == 3;
  in.beta = beta;
  in.n_steps = n_steps;
  check_feature_size("the pattern size d (query.shape[-1])", in.dim);
  TORCH_CHECK_VALUE(in.patterns >= 1, kOp,
                    ": expected at least one stored pattern (M = stored.shape[-2]), got M = 0");
  check_patterns("stored", stored, in, in.dim);
  in.value_dim = in.dim;
  if (values) {
    TORCH_CHECK_VALUE(values->dim() == stored.dim(), kOp, ": expected values with as many ",
                      "dimensions as stored (", stored.dim(), "), got shape ",
                      shape_string(values->sizes()));
    check_patterns("values", *values, in, -1);
    in.value_dim = values->size(-1);
    check_feature_size("the value size dv (values.shape[-1])", in.value_dim);
    in.values = values->contiguous();
  }
  in.query = query.contiguous();
  in.stored = stored.contiguous();
  return in;
}

bool fits_saved_probabilities(const RetrievalInputs& in, int64_t max_saved_bytes) {
  TORCH_CHECK_VALUE(max_saved_bytes >= 0, kOp, ": expected max_saved_bytes >= 0, got ",
                    max_saved_bytes);
  // A size past int64 (an overflow) exceeds every budget.
  int64_t bytes = static_cast<int64_t>(c10::elementSize(in.acc_dtype()));
  for (const int64_t size : probabilities_shape(in)) {
    if (__builtin_mul_overflow(bytes, size, &bytes)) return false;
  }
  return bytes <= max_saved_bytes;
}

ForwardResult empty_forward_outputs(const RetrievalInputs& in) {
  const auto acc = in.query.options().dtype(in.acc_dtype());
  at::Tensor out = at::empty({in.batch, in.heads, in.queries, in.value_dim}, in.query.options());
  return {out, at::empty({in.n_steps - 1, in.batch, in.heads, in.queries, in.dim}, acc),
          at::empty({in.n_steps, in.batch, in.heads, in.queries}, acc),
          at::empty(in.keep_probabilities ? probabilities_shape(in) : std::vector<int64_t>{0},
                    acc)};
}

void check_backward_inputs(RetrievalInputs& in, const at::Tensor& dout, const at::Tensor& out,
                           const at::Tensor& states, const at::Tensor& lse,
                           const at::Tensor& probabilities) {
  const std::vector<int64_t> out_shape{in.batch, in.heads, in.queries, in.value_dim};
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"dout", dout},
                                std::pair<const char*, const at::Tensor&>{"out", out}}) {
    check_same_device(kOp, name, t, in.query, "query");
    check_dtype(kOp, name, t, {in.query.scalar_type()});
    check_shape(kOp, name, t, out_shape, "(batch, heads, Q, dv)");
  }
  const char* saved = " (saved by the forward pass)";
  check_same_device(kOp, "states", states, in.query, "query");
  check_dtype(kOp, "states", states, {in.acc_dtype()});
  check_shape(kOp, "states", states, {in.n_steps - 1, in.batch, in.heads, in.queries, in.dim},
              (std::string("(n_steps - 1, batch, heads, Q, d)") + saved).c_str());
  check_same_device(kOp, "lse", lse, in.query, "query");
  check_dtype(kOp, "lse", lse, {in.acc_dtype()});
  check_shape(kOp, "lse", lse, {in.n_steps, in.batch, in.heads, in.queries},
              (std::string("(n_steps, batch, heads, Q)") + saved).c_str());
  check_same_device(kOp, "probabilities", probabilities, in.query, "query");
  check_dtype(kOp, "probabilities", probabilities, {in.acc_dtype()});
  in.keep_probabilities = probabilities.dim() != 1;
  check_shape(kOp, "probabilities", probabilities,
              in.keep_probabilities ? probabilities_shape(in) : std::vector<int64_t>{0},
              (std::string("(n_steps, batch, heads, Q, M) or (0,)") + saved).c_str());
}

}  // namespace hvision::hopfield_retrieval
