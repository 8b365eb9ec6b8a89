// motion_saliency CUDA kernels. The per-pixel math is motion_saliency_step.h's, shared with the
// CPU kernel.
//
// patch_means_kernel: one warp per patch. Its lanes walk the patch's pixels, each computing the
// Sobel magnitude of the luma (the three column terms around the pixel, from the 3x3
// neighbourhood with reflect-101 indices) and the absolute frame difference summed over the
// channels; the warp then sums both by butterfly shuffles (a fixed order: deterministic) and
// writes the patch means. normalise_kernel: one block per frame divides by the frame's maxima
// and blends. The frames are read once.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <type_traits>

#include "common/cuda_utils.cuh"
#include "motion_saliency/motion_saliency.h"
#include "motion_saliency/motion_saliency_step.h"

namespace hvision::motion_saliency {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kNormaliseThreads = 256;

template <typename scalar_t, typename T>
struct PatchArgs {
  const scalar_t* frames;  // (frames, C, H, W), frames = batch * T
  T* motion;               // (frames, P) patch means
  T* saliency;
  int64_t frame_count, time, channels, height, width, patch;
};

template <typename scalar_t, typename T>
HV_DEVICE T luma_at(const scalar_t* frame, int64_t plane, int64_t channels, int64_t offset) {
  if (channels == 1) return T(frame[offset]);
  return luma(T(frame[offset]), T(frame[plane + offset]), T(frame[2 * plane + offset]));
}

// Column x's Sobel terms at row y (rows y - 1 and y + 1 reflected).
template <typename scalar_t, typename T>
HV_DEVICE SobelColumn<T> column_at(const PatchArgs<scalar_t, T>& args, const scalar_t* frame,
                                   int64_t y, int64_t x) {
  const int64_t plane = args.height * args.width, w = args.width;
  const int64_t up = reflect101(y - 1, args.height), down = reflect101(y + 1, args.height);
  return sobel_column(luma_at<scalar_t, T>(frame, plane, args.channels, up * w + x),
                      luma_at<scalar_t, T>(frame, plane, args.channels, y * w + x),
                      luma_at<scalar_t, T>(frame, plane, args.channels, down * w + x));
}

template <typename scalar_t, typename T>
HV_DEVICE T saliency_at(const PatchArgs<scalar_t, T>& args, const scalar_t* frame, int64_t y,
                        int64_t x) {
  const SobelColumn<T> left = column_at(args, frame, y, reflect101(x - 1, args.width));
  const SobelColumn<T> mid = column_at(args, frame, y, x);
  const SobelColumn<T> right = column_at(args, frame, y, reflect101(x + 1, args.width));
  return sobel_magnitude(left.smooth, right.smooth, left.diff, mid.diff, right.diff);
}

template <typename scalar_t, typename T>
HV_DEVICE T motion_at(const PatchArgs<scalar_t, T>& args, const scalar_t* current,
                      const scalar_t* previous, int64_t offset) {
  const int64_t plane = args.height * args.width;
  T sum = 0;
  for (int64_t c = 0; c < args.channels; ++c) {
    sum += abs_difference(T(current[c * plane + offset]), T(previous[c * plane + offset]));
  }
  return sum;
}

template <typename scalar_t, typename T>
__global__ void patch_means_kernel(const PatchArgs<scalar_t, T> args) {
  const int lane = threadIdx.x % gpu::kWarpSize;
  const int64_t patches_x = args.width / args.patch;
  const int64_t patches = args.height / args.patch * patches_x;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / gpu::kWarpSize;
  if (warp >= args.frame_count * patches) return;  // whole warps leave together
  const int64_t index = warp / patches, p = warp % patches;
  const int64_t t = index % args.time;
  const int64_t frame_size = args.channels * args.height * args.width;
  const scalar_t* frame = args.frames + index * frame_size;
  const int64_t motion_t = t > 0 ? t : 1;  // t = 0 takes t = 1's motion
  const bool has_motion = args.time > 1;
  const scalar_t* current = has_motion ? args.frames + (index - t + motion_t) * frame_size : frame;

  const int64_t y0 = p / patches_x * args.patch, x0 = p % patches_x * args.patch;
  T saliency = 0, motion = 0;
  for (int64_t k = lane; k < args.patch * args.patch; k += gpu::kWarpSize) {
    const int64_t y = y0 + k / args.patch, x = x0 + k % args.patch;
    saliency += saliency_at(args, frame, y, x);
    if (has_motion) motion += motion_at(args, current, current - frame_size, y * args.width + x);
  }
  saliency = gpu::group_sum(saliency, gpu::kWarpSize);
  motion = gpu::group_sum(motion, gpu::kWarpSize);
  if (lane == 0) {
    const T area = T(args.patch * args.patch);
    args.saliency[warp] = saliency / area;
    args.motion[warp] = motion / (area * T(args.channels));
  }
}

// The maximum of `value` over the block (every thread gets it).
template <typename T>
__device__ T block_max(T value, T* shared) {
  shared[threadIdx.x] = value;
  __syncthreads();
  for (int width = blockDim.x / 2; width > 0; width /= 2) {
    if (threadIdx.x < width) {
      shared[threadIdx.x] = motion_saliency_max(shared[threadIdx.x], shared[threadIdx.x + width]);
    }
    __syncthreads();
  }
  const T result = shared[0];
  __syncthreads();
  return result;
}

template <typename T>
__global__ void normalise_kernel(const T* motion, const T* saliency, T* scores, int64_t patches,
                                 T alpha) {
  __shared__ T shared[kNormaliseThreads];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * patches;
  T motion_max = 0, saliency_max = 0;
  for (int64_t p = threadIdx.x; p < patches; p += blockDim.x) {
    motion_max = motion_saliency_max(motion_max, motion[base + p]);
    saliency_max = motion_saliency_max(saliency_max, saliency[base + p]);
  }
  motion_max = block_max(motion_max, shared);
  saliency_max = block_max(saliency_max, shared);
  for (int64_t p = threadIdx.x; p < patches; p += blockDim.x) {
    scores[base + p] =
        motion_saliency_score(motion[base + p], motion_max, saliency[base + p], saliency_max, alpha);
  }
}

template <typename scalar_t>
void launch(const Frames& in, at::Tensor& scores) {
  using T = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const int64_t frame_count = in.batch * in.time, patches = in.patches();
  at::Tensor motion = at::empty_like(scores), saliency = at::empty_like(scores);
  const PatchArgs<scalar_t, T> args{in.frames.const_data_ptr<scalar_t>(),
                                    motion.mutable_data_ptr<T>(),
                                    saliency.mutable_data_ptr<T>(),
                                    frame_count,
                                    in.time,
                                    in.channels,
                                    in.height,
                                    in.width,
                                    in.patch};
  const int64_t blocks = (frame_count * patches + kWarpsPerBlock - 1) / kWarpsPerBlock;
  TORCH_CHECK(blocks <= INT_MAX && frame_count <= INT_MAX,
              "motion_saliency: too many patches for one CUDA launch (", frame_count * patches, ")");
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  patch_means_kernel<<<static_cast<unsigned>(blocks), kWarpsPerBlock * gpu::kWarpSize, 0, stream>>>(
      args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  normalise_kernel<<<static_cast<unsigned>(frame_count), kNormaliseThreads, 0, stream>>>(
      motion.const_data_ptr<T>(), saliency.const_data_ptr<T>(), scores.mutable_data_ptr<T>(),
      patches, static_cast<T>(in.alpha));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor motion_saliency_cuda(const Frames& in) {
  const c10::cuda::CUDAGuard guard(in.frames.device());
  at::Tensor scores =
      at::empty({in.batch, in.time, in.patches()}, in.frames.options().dtype(in.score_dtype()));
  if (scores.numel() == 0) return scores;
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kByte, at::kHalf, at::kBFloat16, in.frames.scalar_type(),
                                  "motion_saliency_cuda", [&] { launch<scalar_t>(in, scores); });
  return scores;
}

constexpr Kernels kCudaKernels{&motion_saliency_cuda};

}  // namespace

TORCH_LIBRARY_IMPL(hvision, CUDA, m) {
  m.impl("motion_saliency", &motion_saliency_op<kCudaKernels>);
}

}  // namespace hvision::motion_saliency
