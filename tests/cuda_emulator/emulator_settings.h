// Run-time settings of the CUDA emulator, set from Python through the test extension.
#pragma once
#include <cstdint>

namespace cuemu {

// The order in which a block's threads run between two synchronisation points.
enum class Order : int { kForward = 0, kReverse = 1, kLaggingWarp = 2 };

struct Settings {
  Order order = Order::kForward;
  // cp.async copies land when a block barrier follows the issuing thread's wait (the latest
  // that a correct kernel allows), rather than at issue (the earliest).
  bool defer_async_copies = true;
  uint64_t seed = 0;  // draws the lagging warp of each block
  uint64_t grid_stride_blocks = 0;  // when > 0, grid-stride kernels get at most this many blocks
  uint64_t grids_run = 0;          // kernel launches completed, so tests see the emulator ran
  uint64_t prefetched_bytes = 0;   // asked of L2 by prefetch_l2, so tests see a path prefetch
  uint64_t float_atomics = 0;      // floats added by atomicAdd, so tests see a path add with them
  uint64_t async_copied_bytes = 0;  // issued by cp_async, so tests see a path copy with it
};
Settings& settings();

}  // namespace cuemu
