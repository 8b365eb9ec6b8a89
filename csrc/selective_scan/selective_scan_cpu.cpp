// selective_scan CPU kernels. Work is split over (batch, channel) with at::parallel_for; within a
// channel the time loop is sequential and the N states of a step form one vector loop (`omp
// simd`), compiled per instruction set (HV_CPU_DISPATCH). Inputs in fp16/bf16 are widened one row
// at a time; everything accumulates in float (double for float64 inputs).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common/cpu_dispatch.h"
#include "common/cpu_widen.h"
#include "common/step_math.h"
#include "selective_scan/selective_scan.h"

namespace hvision::selective_scan {
namespace {

// The backward pass splits each batch's channels into at most this many blocks, one task each.
// A task sums its channels' dB/dC into a private buffer and the buffers are summed in a fixed
// order afterwards, so gradients are deterministic whatever the thread count.
constexpr int64_t kMaxChannelBlocks = 16;

// B or C as one channel reads it: the N values of step t start at data + t * step (step = N for
// a variable projection stored (L, N), 0 for a fixed one).
template <typename T>
struct Projection {
  const T* data;
  int64_t step;
  const T* at(int64_t t) const { return data + t * step; }
};

// One channel (batch b, channel d) of the scan, in the accumulation type T.
template <typename T>
struct Channel {
  const T* u;          // (L,)
  const T* delta_raw;  // (L,), before bias and softplus
  const T* z;          // (L,) or nullptr
  const T* A;          // (N,)
  Projection<T> B, C;
  T skip_d, delta_bias;
  int64_t length, state;
  bool softplus, reverse;

  int64_t time(int64_t step) const { return reverse ? length - 1 - step : step; }
};

// Rows of per-time-step factors, computed for the whole channel in vector loops before the
// sequential scan so that its critical path holds no exp, log or division of its own.
template <typename T>
struct StepFactors {
  T* delta;       // δ_t
  T* delta_grad;  // dδ_t / d(delta_t + bias)            (backward)
  T* gate;        // silu(z_t)                           (with z)
  T* gate_grad;   // silu'(z_t)                          (backward with z)
};

// Per-channel gradient destinations. dB/dC follow the same Projection layout as B/C and are
// accumulated (+=); dA likewise.
template <typename T>
struct ChannelGrads {
  T* du;
  T* ddelta;
  T* dz;  // nullptr without z
  T* dA;
  T* dB;
  T* dC;
  T d_skip = 0, d_delta_bias = 0;
};

template <bool kSoftplus, typename T>
HV_INLINE void discretize_row(const T* raw, T bias, int64_t length, T* delta, T* delta_grad) {
#pragma omp simd
  for (int64_t t = 0; t < length; ++t) delta[t] = scan_delta(raw[t] + bias, kSoftplus);
  if (delta_grad == nullptr) return;
#pragma omp simd
  for (int64_t t = 0; t < length; ++t) delta_grad[t] = scan_delta_grad(raw[t] + bias, kSoftplus);
}

template <typename T>
HV_INLINE void compute_step_factors(const Channel<T>& c, const StepFactors<T>& f) {
  const int64_t L = c.length;
  if (c.softplus) {
    discretize_row<true>(c.delta_raw, c.delta_bias, L, f.delta, f.delta_grad);
  } else {
    discretize_row<false>(c.delta_raw, c.delta_bias, L, f.delta, f.delta_grad);
  }
  if (c.z == nullptr) return;
  const T* z = c.z;
  T* gate = f.gate;
#pragma omp simd
  for (int64_t t = 0; t < L; ++t) gate[t] = scan_gate(z[t]).value;
  if (f.gate_grad == nullptr) return;
  T* gate_grad = f.gate_grad;
#pragma omp simd
  for (int64_t t = 0; t < L; ++t) gate_grad[t] = scan_gate(z[t]).derivative;
}

// Sum over the state axis. Products are staged in a row and summed by a fixed-width tree rather
// than with `omp simd reduction`, which GCC leaves scalar in the AVX2 variant.
template <typename T>
HV_INLINE T sum_row(const T* values, int64_t N) {
  constexpr int64_t kLanes = 16;
  T lanes[kLanes] = {};
  int64_t n = 0;
  for (; n + kLanes <= N; n += kLanes) {
#pragma omp simd
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += values[n + l];
  }
  for (int64_t l = 0; n + l < N; ++l) lanes[l] += values[n + l];
  for (int64_t width = kLanes / 2; width > 0; width /= 2) {
#pragma omp simd
    for (int64_t l = 0; l < width; ++l) lanes[l] += lanes[l + width];
  }
  return lanes[0];
}

// kStates > 0 fixes the state size at compile time (N = 16 and 8 get straight-line vector
// code); 0 reads it from the channel.
template <int64_t kStates, typename T>
HV_INLINE void forward_channel(const Channel<T>& c, const StepFactors<T>& f, T* state, T* out,
                               T* checkpoints, T* products) {
  compute_step_factors(c, f);
  const int64_t N = kStates > 0 ? kStates : c.state;
  const T* A = c.A;
  for (int64_t step = 0; step < c.length; ++step) {
    if (step % kScanChunk == 0) {
      std::copy_n(state, N, checkpoints + step / kScanChunk * N);
    }
    const int64_t t = c.time(step);
    const T delta = f.delta[t];
    const T delta_u = delta * c.u[t];
    const T* B = c.B.at(t);
    const T* C = c.C.at(t);
#pragma omp simd
    for (int64_t n = 0; n < N; ++n) {
      state[n] = scan_state_update(state[n], scan_decay(delta, A[n]), B[n], delta_u);
      products[n] = C[n] * state[n];
    }
    out[t] = sum_row(products, N);
  }
  const T* u = c.u;
  const T* gate = f.gate;
  const T skip_d = c.skip_d;
#pragma omp simd
  for (int64_t t = 0; t < c.length; ++t) {
    out[t] = scan_output(out[t], u[t], skip_d, gate ? gate[t] : T(1));
  }
}

// Recomputes the states of one chunk from its checkpoint: states[k] enters step first + k
// (k = 0..count), decays[k] is that step's exp(δA).
template <int64_t kStates, typename T>
HV_INLINE void recompute_chunk(const Channel<T>& c, const T* delta, int64_t first, int64_t count,
                               const T* checkpoint, T* states, T* decays) {
  const int64_t N = kStates > 0 ? kStates : c.state;
  const T* A = c.A;
  std::copy_n(checkpoint, N, states);
  for (int64_t k = 0; k < count; ++k) {
    const int64_t t = c.time(first + k);
    const T step_delta = delta[t];
    const T delta_u = step_delta * c.u[t];
    const T* B = c.B.at(t);
    const T* prev = states + k * N;
    T* next = states + (k + 1) * N;
    T* decay = decays + k * N;
#pragma omp simd
    for (int64_t n = 0; n < N; ++n) {
      decay[n] = scan_decay(step_delta, A[n]);
      next[n] = scan_state_update(prev[n], decay[n], B[n], delta_u);
    }
  }
}

// Scratch of the backward pass of one channel, in values.
inline int64_t backward_scratch_size(int64_t N) { return (2 * kScanChunk + 3) * N; }

// Walks one channel backwards, chunk by chunk. `adjoint` holds dL/d(last state) on entry and
// dL/d(initial state) on exit; `scratch` has backward_scratch_size(N) values.
template <int64_t kStates, typename T>
HV_INLINE void backward_channel(const Channel<T>& c, const StepFactors<T>& f, const T* dout,
                                const T* checkpoints, T* adjoint, T* scratch,
                                ChannelGrads<T>& g) {
  compute_step_factors(c, f);
  const int64_t N = kStates > 0 ? kStates : c.state;
  T* states = scratch;
  T* decays = states + (kScanChunk + 1) * N;
  T* delta_terms = decays + kScanChunk * N;  // per-state terms of the step's sums
  T* u_terms = delta_terms + N;
  // Local copies of the pointers: the stores below must not make the compiler reload them.
  const T* A = c.A;
  T* dA = g.dA;
  for (int64_t chunk = scan_num_chunks(c.length) - 1; chunk >= 0; --chunk) {
    const int64_t first = chunk * kScanChunk;
    const int64_t count = std::min(kScanChunk, c.length - first);
    recompute_chunk<kStates>(c, f.delta, first, count, checkpoints + chunk * N, states, decays);
    for (int64_t k = count - 1; k >= 0; --k) {
      const int64_t t = c.time(first + k);
      const T delta = f.delta[t];
      const T u = c.u[t];
      const T* h = states + (k + 1) * N;
      const T* h_prev = states + k * N;
      const T* decay = decays + k * N;
      const T* B = c.B.at(t);
      const T* C = c.C.at(t);
      T y = 0;  // C·h, needed only for dz; its products are staged in u_terms (free here)
      Gate<T> gate{T(1), T(0)};
      if (c.z) {
        gate = {f.gate[t], f.gate_grad[t]};
#pragma omp simd
        for (int64_t n = 0; n < N; ++n) u_terms[n] = C[n] * h[n];
        y = sum_row(u_terms, N);
      }
      T dy, dz;
      scan_output_backward(dout[t], y, u, c.skip_d, gate, dy, dz);
      if (g.dz) g.dz[t] = dz;
      g.d_skip += dy * u;

      T* dB = g.dB + t * c.B.step;
      T* dC = g.dC + t * c.C.step;
#pragma omp simd
      for (int64_t n = 0; n < N; ++n) {
        dC[n] += dy * h[n];
        adjoint[n] += dy * C[n];
        delta_terms[n] = 0;
        u_terms[n] = 0;
        dB[n] += scan_state_backward(adjoint[n], h_prev[n], decay[n], delta, A[n], B[n], u,
                                     delta_terms[n], u_terms[n], dA[n]);
      }
      g.du[t] = dy * c.skip_d + sum_row(u_terms, N);
      g.ddelta[t] = sum_row(delta_terms, N) * f.delta_grad[t];
      g.d_delta_bias += g.ddelta[t];
    }
  }
}

// The state sizes with a straight-line build of their own: Mamba's default 16 and the 8 of the
// small presets (with N read at run time, N = 8 ran slower than N = 16). Every build is compiled
// per instruction set.
constexpr int64_t kMambaStates = 16;
constexpr int64_t kSmallStates = 8;

template <typename T>
HV_INLINE void scan_forward_channel(const Channel<T>& c, const StepFactors<T>& f, T* state, T* out,
                                    T* checkpoints, T* products) {
  if (c.state == kMambaStates) {
    forward_channel<kMambaStates>(c, f, state, out, checkpoints, products);
  } else if (c.state == kSmallStates) {
    forward_channel<kSmallStates>(c, f, state, out, checkpoints, products);
  } else {
    forward_channel<0>(c, f, state, out, checkpoints, products);
  }
}

template <typename T>
HV_INLINE void scan_backward_channel(const Channel<T>& c, const StepFactors<T>& f, const T* dout,
                                     const T* checkpoints, T* adjoint, T* scratch,
                                     ChannelGrads<T>& g) {
  if (c.state == kMambaStates) {
    backward_channel<kMambaStates>(c, f, dout, checkpoints, adjoint, scratch, g);
  } else if (c.state == kSmallStates) {
    backward_channel<kSmallStates>(c, f, dout, checkpoints, adjoint, scratch, g);
  } else {
    backward_channel<0>(c, f, dout, checkpoints, adjoint, scratch, g);
  }
}

HV_CPU_DISPATCH(run_forward_channel, scan_forward_channel)
HV_CPU_DISPATCH(run_backward_channel, scan_backward_channel)

// Per-thread scratch rows for the step factors of one channel at a time.
template <typename T>
struct FactorRows {
  std::vector<T> delta, delta_grad, gate, gate_grad;

  StepFactors<T> get(int64_t length, bool has_z, bool backward) {
    const auto row = [length](std::vector<T>& v, bool used) {
      if (!used) return static_cast<T*>(nullptr);
      v.resize(length);
      return v.data();
    };
    return {row(delta, true), row(delta_grad, backward), row(gate, has_z),
            row(gate_grad, has_z && backward)};
  }
};

// Where a kernel writes an output row: in place when the types agree, else in `buffer`, which
// narrow_row then stores.
template <typename T, typename scalar_t>
T* output_row(scalar_t* row, int64_t length, std::vector<T>& buffer) {
  if constexpr (std::is_same_v<T, scalar_t>) {
    return row;
  } else {
    buffer.resize(length);
    return buffer.data();
  }
}

template <typename T, typename scalar_t>
void narrow_row(const T* computed, scalar_t* row, int64_t length) {
  if constexpr (!std::is_same_v<T, scalar_t>) std::copy_n(computed, length, row);
}

// Read-only views of everything a channel needs, resolved to raw pointers once per call.
template <typename scalar_t, typename T>
struct ScanView {
  const ScanInputs& in;
  at::Tensor B_rows, C_rows;

  ScanView(const ScanInputs& inputs)
      : in(inputs),
        B_rows(projection_rows(inputs.B, inputs.B_variable(), inputs.acc_dtype())),
        C_rows(projection_rows(inputs.C, inputs.C_variable(), inputs.acc_dtype())) {}

  int64_t row_offset(int64_t b, int64_t d) const { return (b * in.dim + d) * in.length; }

  static Projection<T> projection(const at::Tensor& rows, int64_t groups, const ScanInputs& in,
                                  int64_t b, int64_t d) {
    const T* base = rows.data_ptr<T>();
    if (groups == 0) return {base + d * in.state, 0};
    const int64_t group = d / (in.dim / groups);
    return {base + (b * groups + group) * in.length * in.state, in.state};
  }

  static T value_or(const std::optional<at::Tensor>& t, int64_t d, T fallback) {
    return t ? t->data_ptr<T>()[d] : fallback;
  }

  // The widened u, delta and z rows of channel (b, d), in the three buffers.
  Channel<T> load_channel(int64_t b, int64_t d, std::vector<T> (&buffers)[3]) const {
    const int64_t offset = row_offset(b, d);
    const T* u = widen(in.u.data_ptr<scalar_t>() + offset, in.length, buffers[0]);
    const T* delta = widen(in.delta.data_ptr<scalar_t>() + offset, in.length, buffers[1]);
    const T* z = in.z ? widen(in.z->data_ptr<scalar_t>() + offset, in.length, buffers[2])
                      : nullptr;
    return Channel<T>{u,
                      delta,
                      z,
                      in.A.data_ptr<T>() + d * in.state,
                      projection(B_rows, in.groups_B, in, b, d),
                      projection(C_rows, in.groups_C, in, b, d),
                      value_or(in.D, d, T(0)),
                      value_or(in.delta_bias, d, T(0)),
                      in.length,
                      in.state,
                      in.softplus,
                      in.reverse};
  }
};

template <typename scalar_t>
void forward_kernel(const ScanInputs& in, at::Tensor& out, at::Tensor& last_state,
                    at::Tensor& checkpoints) {
  using T = at::opmath_type<scalar_t>;
  const ScanView<scalar_t, T> view(in);
  const int64_t N = in.state;
  const int64_t chunks = scan_num_chunks(in.length);
  T* states = last_state.data_ptr<T>();
  T* checkpoint_base = checkpoints.data_ptr<T>();
  const T* initial = in.initial_state ? in.initial_state->data_ptr<T>() : nullptr;
  at::parallel_for(0, in.batch * in.dim, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> rows[3], out_buffer, products(N);
    FactorRows<T> factors;
    for (int64_t channel = begin; channel < end; ++channel) {
      const int64_t b = channel / in.dim, d = channel % in.dim;
      const Channel<T> c = view.load_channel(b, d, rows);
      T* state = states + channel * N;
      if (initial) {
        std::copy_n(initial + channel * N, N, state);
      } else {
        std::fill_n(state, N, T(0));
      }
      scalar_t* out_row = out.data_ptr<scalar_t>() + channel * in.length;
      T* computed = output_row<T>(out_row, in.length, out_buffer);
      run_forward_channel(c, factors.get(in.length, c.z != nullptr, false), state, computed,
                          checkpoint_base + channel * chunks * N,
                          products.data());
      narrow_row(computed, out_row, in.length);
    }
  });
}

// Gradients of one backward call in the accumulation type, before the reductions over batch
// and channel blocks that make them the shapes of the inputs.
struct GradBuffers {
  at::Tensor du, ddelta, dz;    // like u (dz empty without z)
  at::Tensor dA;                // (batch, dim, N) per-batch partials
  at::Tensor dB, dC;            // fixed: (batch, dim, N) per-batch partials; variable:
                                // (batch, blocks, G, L, N) per-block partials
  at::Tensor dD, d_delta_bias;  // (batch, dim) per-batch partials
  at::Tensor d_initial_state;   // (batch, dim, N)
};

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

template <typename scalar_t>
void backward_kernel(const ScanInputs& in, const at::Tensor& dout,
                     const std::optional<at::Tensor>& dlast_state, const at::Tensor& checkpoints,
                     GradBuffers& g, int64_t blocks) {
  using T = at::opmath_type<scalar_t>;
  const ScanView<scalar_t, T> view(in);
  const int64_t N = in.state, L = in.length;
  const int64_t chunks = scan_num_chunks(L);
  // A task is (batch, block of channels); it alone writes its rows of the dB/dC buffers.
  const auto grad_projection = [&](const at::Tensor& buffer, int64_t groups, int64_t b,
                                   int64_t block, int64_t d) {
    if (groups == 0) return buffer.data_ptr<T>() + (b * in.dim + d) * N;
    const int64_t group = d / (in.dim / groups);
    return buffer.data_ptr<T>() + ((b * blocks + block) * groups + group) * L * N;
  };
  at::parallel_for(0, in.batch * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> rows[3], dout_buffer, du_buffer, ddelta_buffer, dz_buffer;
    std::vector<T> scratch(backward_scratch_size(N));
    FactorRows<T> factors;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, block = task % blocks;
      for (int64_t d = block * in.dim / blocks; d < (block + 1) * in.dim / blocks; ++d) {
        const int64_t channel = b * in.dim + d;
        const int64_t offset = channel * L;
        const Channel<T> c = view.load_channel(b, d, rows);
        const T* dout_row = widen(dout.data_ptr<scalar_t>() + offset, L, dout_buffer);
        ChannelGrads<T> grads{
            output_row<T>(g.du.data_ptr<scalar_t>() + offset, L, du_buffer),
            output_row<T>(g.ddelta.data_ptr<scalar_t>() + offset, L, ddelta_buffer),
            in.z ? output_row<T>(g.dz.data_ptr<scalar_t>() + offset, L, dz_buffer) : nullptr,
            g.dA.data_ptr<T>() + channel * N,
            grad_projection(g.dB, in.groups_B, b, block, d),
            grad_projection(g.dC, in.groups_C, b, block, d)};
        T* adjoint = g.d_initial_state.data_ptr<T>() + channel * N;
        if (dlast_state) {
          std::copy_n(dlast_state->data_ptr<T>() + channel * N, N, adjoint);
        } else {
          std::fill_n(adjoint, N, T(0));
        }
        run_backward_channel(c, factors.get(L, c.z != nullptr, true), dout_row, checkpoints.data_ptr<T>() + channel * chunks * N,
                             adjoint, scratch.data(), grads);
        narrow_row(grads.du, g.du.data_ptr<scalar_t>() + offset, L);
        narrow_row(grads.ddelta, g.ddelta.data_ptr<scalar_t>() + offset, L);
        if (in.z) narrow_row(grads.dz, g.dz.data_ptr<scalar_t>() + offset, L);
        g.dD.data_ptr<T>()[channel] = grads.d_skip;
        g.d_delta_bias.data_ptr<T>()[channel] = grads.d_delta_bias;
      }
    }
  });
}

ForwardResult forward_cpu(const ScanInputs& in) {
  auto [out, last_state, checkpoints] = empty_forward_outputs(in);
  if (in.length == 0) copy_or_zero(last_state, in.initial_state);
  if (in.u.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.u.scalar_type(),
                                    "selective_scan_fwd_cpu",
                                    [&] { forward_kernel<scalar_t>(in, out, last_state, checkpoints); });
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
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.u.scalar_type(),
                                    "selective_scan_bwd_cpu", [&] {
                                      backward_kernel<scalar_t>(in, dout, dlast_state, checkpoints,
                                                                g, blocks);
                                    });
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
