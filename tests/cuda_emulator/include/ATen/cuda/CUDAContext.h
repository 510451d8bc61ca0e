// The CUDA emulator's stand-in: the current stream is the emulator (launches run synchronously)
// and the device is an H100.
#pragma once
#include <ATen/ATen.h>

#include <c10/cuda/CUDAException.h>

#include "cuda_host_api.h"

namespace at::cuda {
struct EmulatedStream {
  cudaStream_t stream() const { return nullptr; }
};
inline EmulatedStream getCurrentCUDAStream() { return {}; }
inline const cudaDeviceProp* getCurrentDeviceProperties() {
  static const cudaDeviceProp h100;
  return &h100;
}
}  // namespace at::cuda
