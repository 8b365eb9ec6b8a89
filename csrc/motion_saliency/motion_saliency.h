// motion_saliency: validation and the per-device kernel entry points. The schema is in
// csrc/hvision.cpp; the per-pixel math is in motion_saliency_step.h.
#pragma once

#include <ATen/core/Tensor.h>

namespace hvision::motion_saliency {

// The frames of one call after validation, contiguous, with the sizes read off once.
struct Frames {
  at::Tensor frames;  // (batch, T, C, H, W), uint8 or floating
  int64_t batch = 0, time = 0, channels = 0, height = 0, width = 0, patch = 1;
  double alpha = 0.5;

  int64_t patches_y() const { return height / patch; }
  int64_t patches_x() const { return width / patch; }
  int64_t patches() const { return patches_y() * patches_x(); }
  // float32, or float64 for float64 frames.
  at::ScalarType score_dtype() const;
};

Frames check_inputs(const at::Tensor& frames, int64_t patch_size, double alpha);

// One device's kernel (kCpuKernels, kCudaKernels, defined next to it).
struct Kernels {
  at::Tensor (*scores)(const Frames& in);  // (batch, T, P)
};

// The schema-shaped operator function, instantiated once per device with its kernel.
template <const Kernels& kDevice>
at::Tensor motion_saliency_op(const at::Tensor& frames, int64_t patch_size, double alpha) {
  return kDevice.scores(check_inputs(frames, patch_size, alpha));
}

}  // namespace hvision::motion_saliency
