// sparse_attention: argument validation shared by the CPU and CUDA kernels.
#include "sparse_attention/sparse_attention.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "common/checks.h"

namespace hvision::sparse_attention {
namespace {

constexpr const char* kOp = "sparse_attention";
constexpr const char* kShapeMeaning = "(batch, heads, L, head_dim)";

void check_like_q(const char* name, const at::Tensor& t, const at::Tensor& q) {
  check_same_device(kOp, name, t, q, "q");
  check_dtype(kOp, name, t, {q.scalar_type()});
  check_shape(kOp, name, t, q.sizes(), kShapeMeaning);
}

}  // namespace

AttentionInputs check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             std::optional<int64_t> window, std::optional<int64_t> stride,
                             int64_t num_global, bool causal, std::optional<double> scale) {
  TORCH_CHECK_VALUE(q.dim() == 4, kOp, ": expected q of shape ", kShapeMeaning, ", got ",
                    shape_string(q.sizes()));
  check_dtype(kOp, "q", q, {at::kFloat, at::kHalf, at::kBFloat16, at::kDouble});
  check_like_q("k", k, q);
  check_like_q("v", v, q);
  const int64_t head_dim = q.size(3);
  TORCH_CHECK_VALUE(head_dim >= 1 && head_dim <= kMaxHeadDim, kOp,
                    ": expected head_dim (q.shape[3]) in [1, ", kMaxHeadDim, "], got ", head_dim);
  TORCH_CHECK_VALUE(!window || *window >= 0, kOp, ": expected window >= 0 or None, got ",
                    window.value_or(0));
  TORCH_CHECK_VALUE(!stride || *stride >= 1, kOp, ": expected stride >= 1 or None, got ",
                    stride.value_or(0));
  TORCH_CHECK_VALUE(num_global >= 0, kOp, ": expected num_global >= 0, got ", num_global);
  TORCH_CHECK_VALUE(!scale || std::isfinite(*scale), kOp, ": expected a finite scale, got ",
                    scale.value_or(0.0));

  AttentionInputs in;
  in.batch = q.size(0);
  in.heads = q.size(1);
  in.length = q.size(2);
  in.head_dim = head_dim;
  in.q = q.contiguous();
  in.k = k.contiguous();
  in.v = v.contiguous();
  // A window past the sequence or a stride past it changes no pair (|i − j| < L): clamped to L,
  // so that the pattern's index arithmetic cannot overflow (window = sys.maxsize).
  const int64_t span = std::max<int64_t>(in.length, 1);
  in.pattern = SparsePattern{in.length, window ? std::min(*window, span) : -1,
                             stride ? std::min(*stride, span) : 0, num_global, causal,
                             /*transposed=*/false};
  in.scale = scale.value_or(1.0 / std::sqrt(static_cast<double>(head_dim)));
  return in;
}

SavedForward check_backward_inputs(const AttentionInputs& in, const at::Tensor& dout,
                                   const at::Tensor& out, const at::Tensor& lse) {
  check_like_q("dout", dout, in.q);
  check_like_q("out", out, in.q);
  check_same_device(kOp, "lse", lse, in.q, "q");
  check_dtype(kOp, "lse", lse, {in.acc_dtype()});
  check_shape(kOp, "lse", lse, {in.batch, in.heads, in.length}, "(batch, heads, L)");
  return {dout.contiguous(), out.contiguous(), lse.contiguous()};
}

}  // namespace hvision::sparse_attention
