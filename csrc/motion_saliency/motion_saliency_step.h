// Motion–saliency scores of video patches: per-pixel luma, the 3x3 Sobel gradient magnitude
// (separable: a vertical pass per column, then a horizontal pass per pixel), reflect-101 borders,
// and the blend of the per-frame normalised motion and saliency.
//
// Compiled into both the CPU and the CUDA kernels, on the elementary functions of
// common/step_math.h.
#pragma once

#include <cstdint>

#include "common/step_math.h"

namespace hvision {

// The index a reflect-101 border (OpenCV's default, "gfedcb|abcdefgh|gfedcba") reads for i in
// [-1, n]; a line of one pixel reflects onto itself.
HV_HOST_DEVICE int64_t reflect101(int64_t i, int64_t n) {
  if (n == 1) return 0;
  return i < 0 ? -i : (i >= n ? 2 * n - 2 - i : i);
}

template <typename T>
HV_HOST_DEVICE T luma(T red, T green, T blue) {
  return T(0.299) * red + T(0.587) * green + T(0.114) * blue;
}

// The vertical half of both Sobel kernels at one column, from the pixels above, at and below:
// `smooth` (1, 2, 1) feeds the x-gradient and `diff` (-1, 0, 1) the y-gradient.
template <typename T>
struct SobelColumn {
  T smooth, diff;
};

template <typename T>
HV_HOST_DEVICE SobelColumn<T> sobel_column(T up, T mid, T down) {
  return {up + T(2) * mid + down, down - up};
}

// sqrt(gx² + gy²) at a pixel from the column terms of its left, own and right columns:
// gx = smooth(right) - smooth(left), gy = diff(left) + 2 diff(mid) + diff(right).
template <typename T>
HV_HOST_DEVICE T sobel_magnitude(T smooth_left, T smooth_right, T diff_left, T diff_mid,
                                 T diff_right) {
  const T gx = smooth_right - smooth_left;
  const T gy = diff_left + T(2) * diff_mid + diff_right;
  return math::sqrt(gx * gx + gy * gy);
}

template <typename T>
HV_HOST_DEVICE T abs_difference(T a, T b) {
  return a > b ? a - b : b - a;
}

// Each of motion and saliency is divided by its maximum over the frame's patches (+1e-6).
constexpr double kMotionSaliencyEpsilon = 1e-6;

// The running maximum of a frame's patch values, NaN once any value is NaN (as torch.amax), so
// that a NaN pixel spoils its whole frame rather than only its patch.
template <typename T>
HV_HOST_DEVICE T motion_saliency_max(T largest, T value) {
  return value > largest || value != value ? value : largest;
}

template <typename T>
HV_HOST_DEVICE T motion_saliency_score(T motion, T motion_max, T saliency, T saliency_max,
                                       T alpha) {
  const T eps = T(kMotionSaliencyEpsilon);
  return alpha * (motion / (motion_max + eps)) + (T(1) - alpha) * (saliency / (saliency_max + eps));
}

}  // namespace hvision
