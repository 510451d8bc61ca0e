// The CUDA bindings' switches of the streaming kernels' reads: DLLM_L2_PREFETCH
// (csrc/kernels/cuda_rows.cuh) and DLLM_ASYNC_COPIES (csrc/kernels/cuda_async_rows.cuh). Each is
// read at every call, so that a benchmark times both settings in one process; a CUDA graph keeps
// the value it was captured with. Read before the generator's offset is taken, so that a refused
// value consumes no random numbers.
#pragma once
#include <ATen/cuda/CUDAContext.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace dllm::binding {

// Whether the variable is "1"; unset, empty or "0" is off, anything else an error.
inline bool switched_on(const char* variable) {
  const char* choice = std::getenv(variable);
  if (choice == nullptr || *choice == '\0' || std::strcmp(choice, "0") == 0) return false;
  TORCH_CHECK(std::strcmp(choice, "1") == 0, variable, " must be \"0\" or \"1\", got \"", choice, "\"");
  return true;
}

// 0 when DLLM_L2_PREFETCH is off; on, the blocks resident at once at blocks_per_sm (the kernel's
// __launch_bounds__ minimum).
inline int64_t l2_prefetch_blocks(int blocks_per_sm) {
  if (!switched_on("DLLM_L2_PREFETCH")) return 0;
  return int64_t(blocks_per_sm) * at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
}

inline bool async_copies() { return switched_on("DLLM_ASYNC_COPIES"); }

}  // namespace dllm::binding
