// DLLM_L2_PREFETCH for the CUDA bindings of the streaming kernels (csrc/kernels/cuda_rows.cuh).
#pragma once
#include <ATen/cuda/CUDAContext.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace dllm::binding {

// 0 when DLLM_L2_PREFETCH is unset or "0"; for "1", the blocks resident at once at blocks_per_sm
// (the kernel's __launch_bounds__ minimum). Read at every call, so that a benchmark times both
// in one process; a CUDA graph keeps the value it was captured with. Read before the generator's
// offset is taken, so that a refused value consumes no random numbers.
inline int64_t l2_prefetch_blocks(int blocks_per_sm) {
  const char* choice = std::getenv("DLLM_L2_PREFETCH");
  if (choice == nullptr || *choice == '\0' || std::strcmp(choice, "0") == 0) return 0;
  TORCH_CHECK(std::strcmp(choice, "1") == 0, "DLLM_L2_PREFETCH must be \"0\" or \"1\", got \"", choice, "\"");
  return int64_t(blocks_per_sm) * at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
}

}  // namespace dllm::binding
