// selective_scan: argument validation and output allocation shared by the CPU and CUDA kernels.
#include "selective_scan/selective_scan.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "common/checks.h"
#include "selective_scan/selective_scan_step.h"

namespace hvision::selective_scan {
namespace {

constexpr const char* kOp = "selective_scan";

// Validates B or C and returns it canonical (fixed (dim, N) contiguous, or grouped (batch, G, N, L)
// with its strides as given: see projection_rows) with its number of groups (0 when fixed).
std::pair<at::Tensor, int64_t> check_projection(const char* name, const at::Tensor& t,
                                                const ScanInputs& in) {
  check_same_device(kOp, name, t, in.u, "u");
  if (t.dim() == 2) {
    check_dtype(kOp, name, t, {in.acc_dtype()});
    check_shape(kOp, name, t, {in.dim, in.state}, "(dim, N)");
    return {t.contiguous(), 0};
  }
  TORCH_CHECK_VALUE(t.dim() == 3 || t.dim() == 4, kOp, ": expected ", name,
                    " of shape (dim, N), (batch, N, L) or (batch, G, N, L), got ",
                    shape_string(t.sizes()));
  check_dtype(kOp, name, t, {in.u.scalar_type(), in.acc_dtype()});
  if (t.dim() == 3) {
    check_shape(kOp, name, t, {in.batch, in.state, in.length}, "(batch, N, L)");
    return {t.unsqueeze(1), 1};
  }
  const int64_t groups = t.size(1);
  TORCH_CHECK_VALUE(groups >= 1 && in.dim % groups == 0, kOp, ": expected the number of groups G of ",
                    name, " to divide dim = ", in.dim, ", got G = ", groups);
  check_shape(kOp, name, t, {in.batch, groups, in.state, in.length}, "(batch, G, N, L)");
  return {t, groups};
}

// Validates an optional per-channel or per-state tensor in the accumulation dtype.
std::optional<at::Tensor> check_parameter(const char* name, const std::optional<at::Tensor>& t,
                                          const ScanInputs& in, at::IntArrayRef shape,
                                          const char* meaning) {
  if (!t) return std::nullopt;
  check_same_device(kOp, name, *t, in.u, "u");
  check_dtype(kOp, name, *t, {in.acc_dtype()});
  check_shape(kOp, name, *t, shape, meaning);
  return t->contiguous();
}

// Validates a tensor that must match u in shape and dtype (delta, z, dout).
void check_like_u(const char* name, const at::Tensor& t, const at::Tensor& u) {
  check_same_device(kOp, name, t, u, "u");
  check_dtype(kOp, name, t, {u.scalar_type()});
  check_shape(kOp, name, t, u.sizes(), "(batch, dim, L)");
}

}  // namespace

ScanInputs check_inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                        const at::Tensor& B, const at::Tensor& C,
                        const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                        const std::optional<at::Tensor>& delta_bias, bool delta_softplus,
                        const std::optional<at::Tensor>& initial_state, bool reverse) {
  TORCH_CHECK_VALUE(u.dim() == 3, kOp, ": expected u of shape (batch, dim, L), got ",
                    shape_string(u.sizes()));
  check_dtype(kOp, "u", u, {at::kFloat, at::kHalf, at::kBFloat16, at::kDouble});
  check_like_u("delta", delta, u);

  ScanInputs in;
  in.batch = u.size(0);
  in.dim = u.size(1);
  in.length = u.size(2);
  in.softplus = delta_softplus;
  in.reverse = reverse;

  const at::ScalarType acc = at::toOpMathType(u.scalar_type());
  check_same_device(kOp, "A", A, u, "u");
  check_dtype(kOp, "A", A, {acc});
  TORCH_CHECK_VALUE(A.dim() == 2 && A.size(0) == in.dim, kOp,
                    ": expected A of shape (dim, N) with dim = ", in.dim, ", got ",
                    shape_string(A.sizes()));
  in.state = A.size(1);
  TORCH_CHECK_VALUE(in.state >= 1 && in.state <= kScanMaxState, kOp,
                    ": expected the state size N (A.shape[1]) in [1, ", kScanMaxState, "], got ",
                    in.state);
  in.u = u.contiguous();
  in.delta = delta.contiguous();
  in.A = A.contiguous();

  std::tie(in.B, in.groups_B) = check_projection("B", B, in);
  std::tie(in.C, in.groups_C) = check_projection("C", C, in);
  in.D = check_parameter("D", D, in, {in.dim}, "(dim,)");
  in.delta_bias = check_parameter("delta_bias", delta_bias, in, {in.dim}, "(dim,)");
  in.initial_state = check_parameter("initial_state", initial_state, in,
                                     {in.batch, in.dim, in.state}, "(batch, dim, N)");
  if (z) {
    check_like_u("z", *z, u);
    in.z = z->contiguous();
  }
  return in;
}

ForwardResult empty_forward_outputs(const ScanInputs& in) {
  const auto acc_options = in.u.options().dtype(in.acc_dtype());
  return {at::empty_like(in.u), at::empty({in.batch, in.dim, in.state}, acc_options),
          at::empty({in.batch, in.dim, scan_num_chunks(in.length), in.state}, acc_options)};
}

at::Tensor projection_rows(const at::Tensor& projection, bool variable, at::ScalarType acc) {
  if (!variable) return projection;
  // In place when the caller laid it out so (hvision_ext.ops.selective_scan does), else one copy.
  const at::Tensor rows = projection.transpose(-1, -2);
  if (rows.scalar_type() == acc) return rows.contiguous();
  return at::empty(rows.sizes(), rows.options().dtype(acc)).copy_(rows);
}

void copy_or_zero(at::Tensor& state, const std::optional<at::Tensor>& source) {
  if (source) {
    state.copy_(*source);
  } else {
    state.zero_();
  }
}

void check_backward_inputs(const ScanInputs& in, const at::Tensor& dout,
                           const std::optional<at::Tensor>& dlast_state,
                           const at::Tensor& checkpoints) {
  check_like_u("dout", dout, in.u);
  check_parameter("dlast_state", dlast_state, in, {in.batch, in.dim, in.state}, "(batch, dim, N)");
  check_parameter("checkpoints", checkpoints, in,
                  {in.batch, in.dim, scan_num_chunks(in.length), in.state},
                  "(batch, dim, num_chunks, N) (saved by the forward pass)");
}

}  // namespace hvision::selective_scan
