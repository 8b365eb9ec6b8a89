// motion_saliency CPU kernel. One task per frame (at::parallel_for over batch x T; a thread's
// frames are consecutive, so the previous frame that motion reads is still in cache). A task
// turns its frame into luma once, then walks the rows: the Sobel magnitude and the absolute
// frame difference of a row are added into per-column sums, which become patch sums every
// patch_size rows. The frame's scores are normalised and blended at the end of the task, so the
// frames are read in a single pass. Row loops are vector loops, compiled per instruction set (HV_CPU_DISPATCH).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common/cpu_dispatch.h"
#include "motion_saliency/motion_saliency.h"
#include "motion_saliency/motion_saliency_step.h"

namespace hvision::motion_saliency {
namespace {

// One frame's work: its pixels, the frame motion is measured against, and where its scores go.
template <typename scalar_t, typename T>
struct FrameTask {
  const scalar_t* frame;     // (C, H, W)
  const scalar_t* current;   // motion: |current - previous|, frames t and t-1 (t = 1 for t = 0);
  const scalar_t* previous;  // both nullptr when T = 1 (no motion)
  T* scores;                 // (P,)
  int64_t channels, height, width, patch;
  T alpha;
};

// Per-thread scratch, resized to the frame once.
template <typename T>
struct Scratch {
  std::vector<T> luma;              // (H, W)
  std::vector<T> smooth, diff;      // (W + 2): Sobel column terms, reflected one column each side
  std::vector<T> saliency_columns;  // (W): sums over the rows of the current patch row
  std::vector<T> motion_columns;
  std::vector<T> saliency, motion;  // (P): patch sums

  void resize(int64_t height, int64_t width, int64_t patches) {
    luma.resize(height * width);
    smooth.resize(width + 2);
    diff.resize(width + 2);
    saliency_columns.resize(width);
    motion_columns.resize(width);
    saliency.resize(patches);
    motion.resize(patches);
  }
};

template <typename scalar_t, typename T>
HV_INLINE void frame_luma(const FrameTask<scalar_t, T>& task, T* luma) {
  const int64_t pixels = task.height * task.width;
  const scalar_t* red = task.frame;
  if (task.channels == 1) {
#pragma omp simd
    for (int64_t i = 0; i < pixels; ++i) luma[i] = T(red[i]);
    return;
  }
  const scalar_t* green = red + pixels;
  const scalar_t* blue = green + pixels;
#pragma omp simd
  for (int64_t i = 0; i < pixels; ++i) luma[i] = hvision::luma(T(red[i]), T(green[i]), T(blue[i]));
}

// Adds row y's Sobel magnitudes to `columns`.
template <typename T>
HV_INLINE void add_sobel_row(const T* luma, int64_t y, int64_t height, int64_t width,
                             Scratch<T>& s, T* columns) {
  const T* up = luma + reflect101(y - 1, height) * width;
  const T* mid = luma + y * width;
  const T* down = luma + reflect101(y + 1, height) * width;
  T* smooth = s.smooth.data() + 1;  // smooth[-1] and smooth[W] hold the reflected columns
  T* diff = s.diff.data() + 1;
#pragma omp simd
  for (int64_t x = 0; x < width; ++x) {
    const SobelColumn<T> column = sobel_column(up[x], mid[x], down[x]);
    smooth[x] = column.smooth;
    diff[x] = column.diff;
  }
  smooth[-1] = smooth[reflect101(-1, width)];
  diff[-1] = diff[reflect101(-1, width)];
  smooth[width] = smooth[reflect101(width, width)];
  diff[width] = diff[reflect101(width, width)];
#pragma omp simd
  for (int64_t x = 0; x < width; ++x) {
    columns[x] += sobel_magnitude(smooth[x - 1], smooth[x + 1], diff[x - 1], diff[x], diff[x + 1]);
  }
}

// Adds row y's absolute frame differences, summed over the channels, to `columns`.
template <typename scalar_t, typename T>
HV_INLINE void add_motion_row(const FrameTask<scalar_t, T>& task, int64_t y, T* columns) {
  const int64_t plane = task.height * task.width;
  for (int64_t c = 0; c < task.channels; ++c) {
    const scalar_t* current = task.current + c * plane + y * task.width;
    const scalar_t* previous = task.previous + c * plane + y * task.width;
#pragma omp simd
    for (int64_t x = 0; x < task.width; ++x) {
      columns[x] += abs_difference(T(current[x]), T(previous[x]));
    }
  }
}

// Moves the column sums of one patch row into its patches' sums and clears them.
template <typename T>
HV_INLINE void collect_patch_row(T* columns, int64_t width, int64_t patch, T* patch_sums) {
  for (int64_t px = 0; px < width / patch; ++px) {
    T sum = 0;
    for (int64_t x = px * patch; x < (px + 1) * patch; ++x) sum += columns[x];
    patch_sums[px] = sum;
  }
  std::fill_n(columns, width, T(0));
}

template <typename T>
HV_INLINE T max_of(const T* values, int64_t count) {
  T largest = 0;  // motion and saliency are >= 0
  for (int64_t i = 0; i < count; ++i) largest = motion_saliency_max(largest, values[i]);
  return largest;
}

template <typename scalar_t, typename T>
HV_INLINE void score_frame(const FrameTask<scalar_t, T>& task, Scratch<T>& s) {
  const int64_t width = task.width, patch = task.patch;
  const int64_t patches_x = width / patch, patches = task.height / patch * patches_x;
  frame_luma(task, s.luma.data());
  std::fill(s.saliency_columns.begin(), s.saliency_columns.end(), T(0));
  std::fill(s.motion_columns.begin(), s.motion_columns.end(), T(0));
  for (int64_t y = 0; y < task.height; ++y) {
    add_sobel_row(s.luma.data(), y, task.height, width, s, s.saliency_columns.data());
    if (task.previous) add_motion_row(task, y, s.motion_columns.data());
    if ((y + 1) % patch == 0) {
      const int64_t first = (y / patch) * patches_x;
      collect_patch_row(s.saliency_columns.data(), width, patch, s.saliency.data() + first);
      collect_patch_row(s.motion_columns.data(), width, patch, s.motion.data() + first);
    }
  }
  // Means over the patch (and, for motion, the channels), then the per-frame normalisation.
  const T saliency_scale = T(1) / T(patch * patch);
  const T motion_scale = saliency_scale / T(task.channels);
  const T saliency_max = max_of(s.saliency.data(), patches) * saliency_scale;
  const T motion_max = max_of(s.motion.data(), patches) * motion_scale;
  for (int64_t p = 0; p < patches; ++p) {
    task.scores[p] = motion_saliency_score(s.motion[p] * motion_scale, motion_max,
                                           s.saliency[p] * saliency_scale, saliency_max,
                                           task.alpha);
  }
}

HV_CPU_DISPATCH(run_frame, score_frame)

template <typename scalar_t>
void score_frames(const Frames& in, at::Tensor& scores) {
  using T = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const int64_t frame_size = in.channels * in.height * in.width;
  const scalar_t* frames = in.frames.const_data_ptr<scalar_t>();
  T* out = scores.mutable_data_ptr<T>();
  at::parallel_for(0, in.batch * in.time, 1, [&](int64_t begin, int64_t end) {
    Scratch<T> scratch;
    scratch.resize(in.height, in.width, in.patches());
    for (int64_t index = begin; index < end; ++index) {
      const int64_t t = index % in.time;
      const int64_t video_start = index - t;
      const int64_t motion_t = std::max<int64_t>(t, 1);  // t = 0 takes t = 1's motion
      const bool has_motion = in.time > 1;
      const FrameTask<scalar_t, T> task{
          frames + index * frame_size,
          has_motion ? frames + (video_start + motion_t) * frame_size : nullptr,
          has_motion ? frames + (video_start + motion_t - 1) * frame_size : nullptr,
          out + index * in.patches(),
          in.channels,
          in.height,
          in.width,
          in.patch,
          static_cast<T>(in.alpha)};
      run_frame(task, scratch);
    }
  });
}

at::Tensor motion_saliency_cpu(const Frames& in) {
  at::Tensor scores =
      at::empty({in.batch, in.time, in.patches()}, in.frames.options().dtype(in.score_dtype()));
  if (scores.numel() == 0) return scores;
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kByte, at::kHalf, at::kBFloat16, in.frames.scalar_type(),
                                  "motion_saliency_cpu", [&] { score_frames<scalar_t>(in, scores); });
  return scores;
}

constexpr Kernels kCpuKernels{&motion_saliency_cpu};

}  // namespace

TORCH_LIBRARY_IMPL(hvision, CPU, m) {
  m.impl("motion_saliency", &motion_saliency_op<kCpuKernels>);
}

}  // namespace hvision::motion_saliency
