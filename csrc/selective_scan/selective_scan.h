// selective_scan: validation and the per-device kernel entry points. The schema is in
// csrc/hvision.cpp; the math of a step is in selective_scan_step.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace hvision::selective_scan {

// The inputs of one call after validation: contiguous tensors, a variable B or C viewed as
// grouped (batch, G, N, L), and the sizes and flags read off once.
struct ScanInputs {
  at::Tensor u, delta, A, B, C;  // B, C: fixed (dim, N) or variable (batch, G, N, L)
  std::optional<at::Tensor> D, z, delta_bias, initial_state;
  int64_t batch = 0, dim = 0, length = 0, state = 0;
  int64_t groups_B = 0, groups_C = 0;  // 0 for a fixed (dim, N) B or C
  bool softplus = false, reverse = false;

  bool B_variable() const { return groups_B > 0; }
  bool C_variable() const { return groups_C > 0; }
  at::ScalarType acc_dtype() const { return A.scalar_type(); }
};

ScanInputs check_inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                        const at::Tensor& B, const at::Tensor& C,
                        const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                        const std::optional<at::Tensor>& delta_bias, bool delta_softplus,
                        const std::optional<at::Tensor>& initial_state, bool reverse);

// (out, last_state, checkpoints): checkpoints is (batch, dim, num_chunks, N), the state entering
// every chunk of kScanChunk steps in scan order (1/kScanChunk of the states: always kept, so that
// any forward call can be differentiated).
using ForwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
// (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state); dz is empty when z is absent.
using BackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                  at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The outputs of the forward pass, allocated for `in` (shared by every device).
ForwardResult empty_forward_outputs(const ScanInputs& in);

// B or C as the kernels read it: fixed (dim, N) as given; variable (batch, G, N, L) as contiguous
// (batch, G, L, N) rows in the accumulation type. The kernels want the N values of a time step
// adjacent: a step updates the N states as one vector. A variable B or C whose memory already is
// so (its (L, N) transpose contiguous, in the accumulation type) is read in place, and dB/dC
// come back in the same layout, so neither pass copies B or C nor transposes their gradients.
at::Tensor projection_rows(const at::Tensor& projection, bool variable, at::ScalarType acc);

// `state` <- `source`, or zeros without one: last_state and dinitial_state of a scan of L = 0.
void copy_or_zero(at::Tensor& state, const std::optional<at::Tensor>& source);

// Checks the backward-only arguments against the validated inputs.
void check_backward_inputs(const ScanInputs& in, const at::Tensor& dout,
                           const std::optional<at::Tensor>& dlast_state,
                           const at::Tensor& checkpoints);

// One device's kernels (kCpuKernels, kCudaKernels, defined next to them).
struct Kernels {
  ForwardResult (*forward)(const ScanInputs& in);
  BackwardResult (*backward)(const ScanInputs& in, const at::Tensor& dout,
                             const std::optional<at::Tensor>& dlast_state,
                             const at::Tensor& checkpoints);
};

// The schema-shaped operator functions, instantiated once per device with its kernels.
template <const Kernels& kDevice>
ForwardResult forward_op(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                         const at::Tensor& B, const at::Tensor& C,
                         const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                         const std::optional<at::Tensor>& delta_bias, bool delta_softplus,
                         const std::optional<at::Tensor>& initial_state, bool reverse) {
  return kDevice.forward(check_inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                      initial_state, reverse));
}

template <const Kernels& kDevice>
BackwardResult backward_op(const at::Tensor& dout, const std::optional<at::Tensor>& dlast_state,
                           const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                           const at::Tensor& B, const at::Tensor& C,
                           const std::optional<at::Tensor>& D,
                           const std::optional<at::Tensor>& z,
                           const std::optional<at::Tensor>& delta_bias, bool delta_softplus,
                           const std::optional<at::Tensor>& initial_state, bool reverse,
                           const at::Tensor& checkpoints) {
  const ScanInputs in = check_inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                     initial_state, reverse);
  check_backward_inputs(in, dout, dlast_state, checkpoints);
  BackwardResult grads =
      kDevice.backward(in, dout.contiguous(),
             dlast_state ? std::optional<at::Tensor>(dlast_state->contiguous()) : std::nullopt,
             checkpoints.contiguous());
  // Kernels return dB/dC in the canonical (batch, G, N, L) layout; give them B's and C's shapes.
  std::get<3>(grads) = std::get<3>(grads).reshape(B.sizes());
  std::get<4>(grads) = std::get<4>(grads).reshape(C.sizes());
  return grads;
}

}  // namespace hvision::selective_scan
