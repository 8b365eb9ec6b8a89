// selective_scan CPU entry: both passes run the lane kernels for up to kMaxLaneStates states and
// the per-state kernels for more (selective_scan_cpu.h lists the files). The backward pass
// allocates the gradient buffers its tasks fill and reduces them to the shapes of the inputs.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "selective_scan/selective_scan.h"
#include "selective_scan/selective_scan_cpu.h"
#include "selective_scan/selective_scan_step.h"

namespace hvision::selective_scan {
namespace {

using cpu_kernels::GradBuffers;
using cpu_kernels::uses_lanes;

// The backward pass splits each batch's channels into at most this many blocks, one task each.
// A task sums its channels' dB/dC into a private buffer and the buffers are summed in a fixed
// order afterwards, so gradients are deterministic whatever the thread count.
constexpr int64_t kMaxChannelBlocks = 16;

GradBuffers empty_grads(const ScanInputs& in, int64_t blocks) {
  const auto acc = in.u.options().dtype(in.acc_dtype());
  const auto projection = [&](bool variable, int64_t groups) {
    return variable ? at::zeros({in.batch, blocks, groups, in.length, in.state}, acc)
                    : at::zeros({in.batch, in.dim, in.state}, acc);
  };
  GradBuffers g;
  g.du = at::empty_like(in.u);
  g.ddelta = at::empty_like(in.u);
  g.dz = in.z ? at::empty_like(in.u) : at::empty({0}, in.u.options());
  g.dA = at::zeros({in.batch, in.dim, in.state}, acc);
  g.dB = projection(in.B_variable(), in.groups_B);
  g.dC = projection(in.C_variable(), in.groups_C);
  g.dD = at::zeros({in.batch, in.dim}, acc);
  g.d_delta_bias = at::zeros({in.batch, in.dim}, acc);
  g.d_initial_state = at::empty({in.batch, in.dim, in.state}, acc);
  return g;
}

// Channel blocks per batch: fewer when B or C has many groups, so that the private dB/dC
// buffers (blocks x G rows of L x N each) stay near the size of B and C themselves.
int64_t channel_blocks(const ScanInputs& in) {
  const int64_t groups = std::max<int64_t>({1, in.groups_B, in.groups_C});
  return std::clamp<int64_t>(kMaxChannelBlocks / groups, 1, std::max<int64_t>(in.dim, 1));
}

// dB or dC from its buffer: fixed (dim, N) summed over the batch, or variable (batch, G, N, L)
// summed over the blocks, in the dtype of the input and the layout of projection_rows.
at::Tensor reduce_projection_grad(const at::Tensor& buffer, bool variable, at::ScalarType dtype) {
  if (!variable) return buffer.sum(0);
  return buffer.sum(1).transpose(-1, -2).to(dtype);
}

ForwardResult forward_cpu(const ScanInputs& in) {
  auto [out, last_state, checkpoints] = empty_forward_outputs(in);
  if (in.length == 0) copy_or_zero(last_state, in.initial_state);
  if (in.u.numel() > 0) {
    const auto kernel = uses_lanes(in) ? &cpu_kernels::forward_lanes_cpu
                                       : &cpu_kernels::forward_states_cpu;
    kernel(in, out, last_state, checkpoints);
  }
  return {out, last_state, checkpoints};
}

BackwardResult backward_cpu(const ScanInputs& in, const at::Tensor& dout,
                            const std::optional<at::Tensor>& dlast_state,
                            const at::Tensor& checkpoints) {
  const int64_t blocks = channel_blocks(in);
  GradBuffers g = empty_grads(in, blocks);
  if (in.length == 0) copy_or_zero(g.d_initial_state, dlast_state);
  if (in.u.numel() > 0) {
    const auto kernel = uses_lanes(in) ? &cpu_kernels::backward_lanes_cpu
                                       : &cpu_kernels::backward_states_cpu;
    kernel(in, dout, dlast_state, checkpoints, g, blocks);
  }
  return {g.du,
          g.ddelta,
          g.dA.sum(0),
          reduce_projection_grad(g.dB, in.B_variable(), in.B.scalar_type()),
          reduce_projection_grad(g.dC, in.C_variable(), in.C.scalar_type()),
          g.dD.sum(0),
          g.dz,
          g.d_delta_bias.sum(0),
          g.d_initial_state};
}

constexpr Kernels kCpuKernels{&forward_cpu, &backward_cpu};

}  // namespace

TORCH_LIBRARY_IMPL(hvision, CPU, m) {
  m.impl("selective_scan_fwd", &forward_op<kCpuKernels>);
  m.impl("selective_scan_bwd", &backward_op<kCpuKernels>);
}

}  // namespace hvision::selective_scan
