// Run-time settings of the CUDA emulator, set from Python through the test extension.
#pragma once
#include <cstdint>

namespace cuemu {

// The order in which a block's threads run between two synchronisation points.
enum class Order : int { kForward = 0, kReverse = 1, kShuffled = 2 };

struct Settings {
  Order order = Order::kForward;
  bool defer_async_copies = true;  // cp.async lands at the issuing thread's wait, not at issue
  uint64_t seed = 0;               // of the shuffled order
  uint64_t grids_run = 0;          // kernel launches completed, so tests see the emulator ran
};
Settings& settings();

}  // namespace cuemu
