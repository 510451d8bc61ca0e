// Random state for the kernels, taken from torch's generators under their lock, so that
// torch.manual_seed reproduces a run and a passed torch.Generator is honoured.
#pragma once
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Generator.h>

#include <mutex>
#include <optional>

#include "dllm/philox.h"

namespace dllm::binding {

// One 64-bit key per call from the CPU generator; (row, index) pick the Philox counter within it.
// A call that draws nothing (draws = false) leaves the generator as it is, but still refuses a
// generator of another device, as a drawing call would.
inline RngState cpu_rng_state(const std::optional<at::Generator>& generator, bool draws = true) {
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
  if (!draws) return {};
  std::lock_guard<std::mutex> lock(gen->mutex_);
  RngState rng;
  rng.seed = gen->random64();
  return rng;
}

// The CUDA generator's Philox (seed, offset), graph-safe, with cpu_rng_state's draws; defined in rng_cuda.cpp.
RngState cuda_rng_state(const std::optional<at::Generator>& generator, bool draws = true);

}  // namespace dllm::binding
