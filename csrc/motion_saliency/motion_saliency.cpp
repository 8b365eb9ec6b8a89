// motion_saliency: argument validation shared by the CPU and CUDA kernels.
#include "motion_saliency/motion_saliency.h"

#include <ATen/ATen.h>

#include "common/checks.h"

namespace hvision::motion_saliency {

at::ScalarType Frames::score_dtype() const {
  return frames.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

Frames check_inputs(const at::Tensor& frames, int64_t patch_size, double alpha) {
  constexpr const char* kOp = "motion_saliency";
  TORCH_CHECK_VALUE(frames.dim() == 5, kOp,
                    ": expected frames of shape (batch, T, C, H, W), got ",
                    shape_string(frames.sizes()));
  check_dtype(kOp, "frames", frames,
              {at::kByte, at::kFloat, at::kHalf, at::kBFloat16, at::kDouble});
  Frames in;
  in.batch = frames.size(0);
  in.time = frames.size(1);
  in.channels = frames.size(2);
  in.height = frames.size(3);
  in.width = frames.size(4);
  TORCH_CHECK_VALUE(in.channels == 1 || in.channels == 3, kOp,
                    ": expected frames with C = 1 (grey) or 3 (RGB) channels, got C = ",
                    in.channels);
  TORCH_CHECK_VALUE(patch_size >= 1, kOp, ": expected patch_size >= 1, got ", patch_size);
  TORCH_CHECK_VALUE(in.height % patch_size == 0 && in.width % patch_size == 0, kOp,
                    ": expected H and W divisible by patch_size = ", patch_size, ", got H = ",
                    in.height, ", W = ", in.width);
  TORCH_CHECK_VALUE(alpha >= 0.0 && alpha <= 1.0, kOp, ": expected alpha in [0, 1], got ", alpha);
  in.patch = patch_size;
  in.alpha = alpha;
  in.frames = frames.contiguous();
  return in;
}

}  // namespace hvision::motion_saliency
