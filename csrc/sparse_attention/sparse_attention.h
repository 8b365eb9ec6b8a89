// sparse_attention: validation and the per-device kernel entry points. The schema is in
// csrc/hvision.cpp; the pattern's enumeration is in sparse_attention_step.h, the
// online-softmax step in csrc/common/step_math.h.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "sparse_attention/sparse_attention_step.h"


namespace hvision::sparse_attention {

constexpr int64_t kMaxHeadDim = 128;

// The inputs of one call after validation: q, k, v contiguous (batch, heads, L, head_dim) in
// their own dtype, the pattern walked query-major, and the softmax scale.
struct AttentionInputs {
  at::Tensor q, k, v;
  SparsePattern pattern;
  double scale = 1.0;
  int64_t batch = 0, heads = 0, length = 0, head_dim = 0;

  at::ScalarType acc_dtype() const { return at::toOpMathType(q.scalar_type()); }

  // The pattern walked key-major, as the dk/dv kernels do.
  SparsePattern transposed_pattern() const {
    SparsePattern p = pattern;
    p.transposed = true;
    return p;
  }
};

AttentionInputs check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             std::optional<int64_t> window, std::optional<int64_t> stride,
                             int64_t num_global, bool causal, std::optional<double> scale);

// Checks dout, out and lse (saved by the forward pass) against the validated inputs and returns
// them contiguous.
struct SavedForward {
  at::Tensor dout, out, lse;
};
SavedForward check_backward_inputs(const AttentionInputs& in, const at::Tensor& dout,
                                   const at::Tensor& out, const at::Tensor& lse);

// (out like q, lse (batch, heads, L) in the accumulation dtype).
using ForwardResult = std::tuple<at::Tensor, at::Tensor>;
// (dq, dk, dv), each like its input.
using BackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// One device's kernels (kCpuKernels, kCudaKernels, defined next to them).
struct Kernels {
  ForwardResult (*forward)(const AttentionInputs& in);
  BackwardResult (*backward)(const AttentionInputs& in, const SavedForward& saved);
};

// The schema-shaped operator functions, instantiated once per device with its kernels.
template <const Kernels& kDevice>
ForwardResult forward_op(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         std::optional<int64_t> window, std::optional<int64_t> stride,
                         int64_t num_global, bool causal, std::optional<double> scale) {
  return kDevice.forward(check_inputs(q, k, v, window, stride, num_global, causal, scale));
}

template <const Kernels& kDevice>
BackwardResult backward_op(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                           const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                           std::optional<int64_t> window, std::optional<int64_t> stride,
                           int64_t num_global, bool causal, std::optional<double> scale) {
  const AttentionInputs in = check_inputs(q, k, v, window, stride, num_global, causal, scale);
  return kDevice.backward(in, check_backward_inputs(in, dout, out, lse));
}

}  // namespace hvision::sparse_attention
