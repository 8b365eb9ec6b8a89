// Small helpers shared by the operators' CUDA kernels.
#pragma once

#include <cuda_runtime.h>

// For the device helpers of a kernel: inlined, so that per-thread arrays stay in registers.
#define HV_DEVICE __device__ __forceinline__

namespace hvision::gpu {

constexpr unsigned kFullWarp = 0xffffffffu;
constexpr int kWarpSize = 32;

// The sum of `value` over an aligned group of `width` lanes (a power of two, at most 32), by
// butterfly exchange. Every lane of the group ends with the same bits: at each level both
// partners add the same two operands. All 32 lanes of the warp must call it, with the same width.
template <typename T>
HV_DEVICE T group_sum(T value, int width) {
  for (int offset = width / 2; offset > 0; offset >>= 1) {
    value += __shfl_xor_sync(kFullWarp, value, offset);
  }
  return value;
}

}  // namespace hvision::gpu
