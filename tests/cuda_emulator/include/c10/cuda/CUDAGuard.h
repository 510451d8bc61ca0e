// The CUDA emulator's stand-in: one emulated device, nothing to guard.
#pragma once
#include <c10/core/Device.h>

#include <optional>

namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
struct OptionalCUDAGuard {
  explicit OptionalCUDAGuard(std::optional<c10::Device>) {}
};
}  // namespace c10::cuda
