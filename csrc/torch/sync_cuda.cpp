#include <c10/cuda/CUDAGraphsC10Utils.h>

#include "checks.h"

namespace dllm::binding {

bool may_sync_current_stream() {
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None;
}

}  // namespace dllm::binding
