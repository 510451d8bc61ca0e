// The emulator extension's Python surface (settings) and the two CUDA-only binding hooks.
#include <torch/extension.h>

#include "emulator_settings.h"
#include "rng.h"

namespace dllm::binding {

// The emulated ops take CPU tensors and a CPU generator; taking the same Philox key as the CPU
// ops makes their draws comparable one to one.
RngState cuda_rng_state(const std::optional<at::Generator>& generator) { return cpu_rng_state(generator); }

// Launches run synchronously, so the device error word can always be read.
bool may_sync_current_stream() { return true; }

}  // namespace dllm::binding

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def(
      "configure",
      [](int order, bool defer_async_copies, uint64_t grid_stride_blocks, uint64_t seed) {
        TORCH_CHECK(order >= 0 && order <= 2, "order: 0 forward, 1 reverse, 2 lagging warp");
        cuemu::settings().order = static_cast<cuemu::Order>(order);
        cuemu::settings().defer_async_copies = defer_async_copies;
        cuemu::settings().grid_stride_blocks = grid_stride_blocks;
        cuemu::settings().seed = seed;
      },
      "Sets the thread order between synchronisation points, when cp.async copies land, and the "
      "most blocks a grid-stride kernel gets (0: as launched).");
  m.def("grids_run", [] { return cuemu::settings().grids_run; }, "Kernel launches the emulator has completed.");
}
