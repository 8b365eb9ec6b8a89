// hopfield_retrieval: validation and the per-device kernel entry points. The schema is in
// csrc/hvision.cpp; the math of a step is in hopfield_retrieval_step.h.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace hvision::hopfield_retrieval {

// The inputs of one call after validation: contiguous tensors and the sizes read off once.
struct RetrievalInputs {
  at::Tensor query;   // (batch, heads, Q, d)
  at::Tensor stored;  // (batch, heads, M, d), or (heads, M, d) when shared
  at::Tensor values;  // like stored with last dim dv; undefined when the values are the patterns
  int64_t batch = 0, heads = 0, queries = 0, patterns = 0, dim = 0, value_dim = 0, n_steps = 1;
  double beta = 1.0;
  bool shared = false;  // one set of stored patterns (and values) for the whole batch
  // Whether the forward pass keeps every step's probabilities for the backward pass.
  bool keep_probabilities = false;

  bool values_given() const { return values.defined(); }
  at::ScalarType acc_dtype() const { return at::toOpMathType(query.scalar_type()); }
  // Which (heads, M, ·) slab of stored/values the rows of (b, h) read: b * heads + h, or h.
  int64_t pattern_set(int64_t b, int64_t h) const { return shared ? h : b * heads + h; }
  int64_t pattern_sets() const { return shared ? heads : batch * heads; }
};

RetrievalInputs check_inputs(const at::Tensor& query, const at::Tensor& stored,
                             const std::optional<at::Tensor>& values, double beta,
                             int64_t n_steps);

// (out, states, lse, probabilities): states (n_steps - 1, batch, heads, Q, d) and lse (n_steps,
// batch, heads, Q) in the accumulation dtype, what the backward pass recomputes the probabilities
// from; probabilities (n_steps, batch, heads, Q, M), the same kept, or empty (0,).
using ForwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
// (dquery, dstored, dvalues); dvalues is empty when the values are the patterns.
using BackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// Whether a forward pass on kernels that can keep the probabilities keeps them: when all of
// them take at most `max_saved_bytes` (>= 0, checked).
bool fits_saved_probabilities(const RetrievalInputs& in, int64_t max_saved_bytes);

// The outputs of the forward pass, allocated for `in` (shared by every device).
ForwardResult empty_forward_outputs(const RetrievalInputs& in);

// Checks the backward-only arguments against the validated inputs, and sets
// in.keep_probabilities from whether the forward pass kept them.
void check_backward_inputs(RetrievalInputs& in, const at::Tensor& dout, const at::Tensor& out,
                           const at::Tensor& states, const at::Tensor& lse,
                           const at::Tensor& probabilities);

// One device's kernels (kCpuKernels, kCudaKernels, defined next to them). Kernels that do not
// keep the probabilities always recompute them and get an empty `probabilities`.
struct Kernels {
  bool keeps_probabilities;
  ForwardResult (*forward)(const RetrievalInputs& in);
  BackwardResult (*backward)(const RetrievalInputs& in, const at::Tensor& dout,
                             const at::Tensor& out, const at::Tensor& states,
                             const at::Tensor& lse, const at::Tensor& probabilities);
};

// The schema-shaped operator functions, instantiated once per device with its kernels.
template <const Kernels& kDevice>
ForwardResult forward_op(const at::Tensor& query, const at::Tensor& stored,
                         const std::optional<at::Tensor>& values, double beta, int64_t n_steps,
                         int64_t max_saved_bytes) {
  RetrievalInputs in = check_inputs(query, stored, values, beta, n_steps);
  in.keep_probabilities =
      fits_saved_probabilities(in, max_saved_bytes) && kDevice.keeps_probabilities;
  return kDevice.forward(in);
}

template <const Kernels& kDevice>
BackwardResult backward_op(const at::Tensor& dout, const at::Tensor& query,
                           const at::Tensor& stored, const std::optional<at::Tensor>& values,
                           const at::Tensor& out, const at::Tensor& states, const at::Tensor& lse,
                           const at::Tensor& probabilities, double beta, int64_t n_steps) {
  RetrievalInputs in = check_inputs(query, stored, values, beta, n_steps);
  check_backward_inputs(in, dout, out, states, lse, probabilities);
  return kDevice.backward(in, dout.contiguous(), out.contiguous(), states.contiguous(),
                          lse.contiguous(), probabilities.contiguous());
}

}  // namespace hvision::hopfield_retrieval
