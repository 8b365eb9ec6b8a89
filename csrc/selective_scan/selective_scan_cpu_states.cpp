// selective_scan CPU kernels for N > kMaxLaneStates states: work is split over (batch, channel)
// with at::parallel_for (over (batch, channel block) in the backward pass), and within a channel
// the time loop is sequential, the N states of a step one vector loop (`omp simd`).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "common/cpu_dispatch.h"
#include "common/cpu_widen.h"
#include "selective_scan/selective_scan_cpu.h"
#include "selective_scan/selective_scan_step.h"

namespace hvision::selective_scan::cpu_kernels {
namespace {

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

// Mamba's default state size, with a straight-line build of its own (compiled per instruction
// set, as every build).
constexpr int64_t kMambaStates = 16;

template <typename T>
HV_INLINE void scan_forward_channel(const Channel<T>& c, const StepFactors<T>& f, T* state, T* out,
                                    T* checkpoints, T* products) {
  if (c.state == kMambaStates) {
    forward_channel<kMambaStates>(c, f, state, out, checkpoints, products);
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
  } else {
    backward_channel<0>(c, f, dout, checkpoints, adjoint, scratch, g);
  }
}

HV_CPU_DISPATCH(run_forward_channel, scan_forward_channel)
HV_CPU_DISPATCH(run_backward_channel, scan_backward_channel)

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

template <typename scalar_t>
void backward_kernel(const ScanInputs& in, const at::Tensor& dout,
                     const std::optional<at::Tensor>& dlast_state, const at::Tensor& checkpoints,
                     GradBuffers& g, int64_t blocks) {
  using T = at::opmath_type<scalar_t>;
  const ScanView<scalar_t, T> view(in);
  const int64_t N = in.state, L = in.length;
  const int64_t chunks = scan_num_chunks(L);
  at::parallel_for(0, in.batch * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> rows[3], dout_buffer, du_buffer, ddelta_buffer, dz_buffer;
    std::vector<T> scratch(backward_scratch_size(N));
    FactorRows<T> factors;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, block = task % blocks;
      const auto [first, last] = task_channels(in, blocks, block);
      for (int64_t d = first; d < last; ++d) {
        const int64_t channel = b * in.dim + d;
        const int64_t offset = channel * L;
        const Channel<T> c = view.load_channel(b, d, rows);
        const T* dout_row = widen(dout.data_ptr<scalar_t>() + offset, L, dout_buffer);
        ChannelGrads<T> grads{
            output_row<T>(g.du.data_ptr<scalar_t>() + offset, L, du_buffer),
            output_row<T>(g.ddelta.data_ptr<scalar_t>() + offset, L, ddelta_buffer),
            in.z ? output_row<T>(g.dz.data_ptr<scalar_t>() + offset, L, dz_buffer) : nullptr,
            g.dA.data_ptr<T>() + channel * N,
            projection_grad<T>(g.dB, in.groups_B, in, blocks, b, block, d),
            projection_grad<T>(g.dC, in.groups_C, in, blocks, b, block, d)};
        T* adjoint = g.d_initial_state.data_ptr<T>() + channel * N;
        if (dlast_state) {
          std::copy_n(dlast_state->data_ptr<T>() + channel * N, N, adjoint);
        } else {
          std::fill_n(adjoint, N, T(0));
        }
        run_backward_channel(c, factors.get(L, c.z != nullptr, true), dout_row,
                             checkpoints.data_ptr<T>() + channel * chunks * N, adjoint,
                             scratch.data(), grads);
        narrow_row(grads.du, g.du.data_ptr<scalar_t>() + offset, L);
        narrow_row(grads.ddelta, g.ddelta.data_ptr<scalar_t>() + offset, L);
        if (in.z) narrow_row(grads.dz, g.dz.data_ptr<scalar_t>() + offset, L);
        g.dD.data_ptr<T>()[channel] = grads.d_skip;
        g.d_delta_bias.data_ptr<T>()[channel] = grads.d_delta_bias;
      }
    }
  });
}

}  // namespace

void forward_states_cpu(const ScanInputs& in, at::Tensor& out, at::Tensor& last_state,
                        at::Tensor& checkpoints) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.u.scalar_type(),
                                  "selective_scan_fwd_cpu", [&] {
                                    forward_kernel<scalar_t>(in, out, last_state, checkpoints);
                                  });
}

void backward_states_cpu(const ScanInputs& in, const at::Tensor& dout,
                         const std::optional<at::Tensor>& dlast_state,
                         const at::Tensor& checkpoints, GradBuffers& g, int64_t blocks) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.u.scalar_type(),
                                  "selective_scan_bwd_cpu", [&] {
                                    backward_kernel<scalar_t>(in, dout, dlast_state, checkpoints, g,
                                                              blocks);
                                  });
}

}  // namespace hvision::selective_scan::cpu_kernels
