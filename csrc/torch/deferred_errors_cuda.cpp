#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>

#include "deferred_errors.h"

namespace dllm::binding {
namespace {

// CUDA-graph capture forbids querying or waiting on events.
bool capturing() {
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
}

// The word copied into pinned memory on the current stream, and an event after the copy.
class CudaWord final : public DeviceWord {
 public:
  explicit CudaWord(const at::Tensor& word)
      : host_(at::empty({1}, word.options().device(at::kCPU).pinned_memory(true))) {
    host_.copy_(word, /*non_blocking=*/true);
    copied_.record(at::cuda::getCurrentCUDAStream());
  }
  // Relaxed: another thread's capture in global mode would otherwise forbid these calls (and fail
  // it); this thread's own capture forbids them anyway.
  bool arrived() override {
    if (capturing()) return false;
    const c10::cuda::CUDAStreamCaptureModeGuard relaxed(cudaStreamCaptureModeRelaxed);
    return copied_.query();
  }
  bool wait() override {
    if (capturing()) return false;
    const c10::cuda::CUDAStreamCaptureModeGuard relaxed(cudaStreamCaptureModeRelaxed);
    copied_.synchronize();
    return true;
  }
  int64_t value() const override { return host_.const_data_ptr<int64_t>()[0]; }

 private:
  at::Tensor host_;
  at::cuda::CUDAEvent copied_;
};

}  // namespace

std::unique_ptr<DeviceWord> copy_to_host_later(const at::Tensor& word) {
  if (capturing()) return nullptr;
  return std::make_unique<CudaWord>(word);
}

}  // namespace dllm::binding
