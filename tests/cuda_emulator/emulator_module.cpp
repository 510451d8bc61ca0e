// The emulator extension's Python surface (settings, and the kernels' shared noise math for
// direct tests) and the two CUDA-only binding hooks (the Philox key, and device words read back).
#include <torch/extension.h>

#include "dllm/philox.h"
#include "deferred_errors.h"
#include "emulator_settings.h"
#include "rng.h"

namespace dllm::binding {
namespace {
bool capturing = false;           // pretend a CUDA graph is being captured
int64_t captured_seed, captured_offset;  // what the graph's replays would refill
}  // namespace

// The emulated ops take CPU tensors and a CPU generator; taking the same Philox key as the CPU
// ops makes their draws comparable one to one. While "capturing", the kernels read the key the
// way they do under CUDA-graph capture: through pointers, the offset plus an intra-graph step.
RngState cuda_rng_state(const std::optional<at::Generator>& generator, bool draws) {
  RngState rng = cpu_rng_state(generator, draws);
  if (!capturing || !draws) return rng;
  constexpr uint64_t kIntragraph = 8;
  captured_seed = int64_t(rng.seed);
  captured_offset = int64_t(rng.offset - kIntragraph);
  RngState captured;
  captured.seed_ptr = &captured_seed;
  captured.offset_ptr = &captured_offset;
  captured.offset_intragraph = kIntragraph;
  return captured;
}

namespace {
bool gpu_behind = false;  // pretend the GPU has not reached the calls made since this was set

// Launches run synchronously, so the word is final when copied; it "arrives" at once unless the
// GPU is behind, then when it catches up or a wait asks for it.
class EmulatedWord final : public DeviceWord {
 public:
  explicit EmulatedWord(int64_t value) : value_(value) {}
  bool arrived() override { return !capturing && (!gpu_behind || waited_); }
  bool wait() override {
    if (capturing) return false;
    waited_ = true;
    return true;
  }
  int64_t value() const override { return value_; }

 private:
  int64_t value_;
  bool waited_ = false;
};
}  // namespace

std::unique_ptr<DeviceWord> copy_to_host_later(const at::Tensor& word) {
  if (capturing) return nullptr;
  return std::make_unique<EmulatedWord>(word.item<int64_t>());
}

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
  m.def("float_atomics", [] { return cuemu::settings().float_atomics; },
        "Floats the kernels have added with atomicAdd (a float2 counts two), in all.");
  m.def("prefetched_bytes", [] { return cuemu::settings().prefetched_bytes; },
        "Bytes the kernels have asked L2 to prefetch (cp.async.bulk.prefetch.L2), in all.");
  m.def("async_copied_bytes", [] { return cuemu::settings().async_copied_bytes; },
        "Bytes the kernels have copied to shared memory with cp.async, in all.");
  m.def(
      "noise_from_bits",
      [](const at::Tensor& bits) {
        TORCH_CHECK(bits.scalar_type() == at::kLong && bits.is_contiguous(), "bits: contiguous int64");
        at::Tensor exponential = at::empty(bits.sizes(), bits.options().dtype(at::kFloat));
        at::Tensor gumbel = at::empty_like(exponential);
        const auto* b = reinterpret_cast<const uint64_t*>(bits.data_ptr<int64_t>());
        for (int64_t i = 0; i < bits.numel(); ++i) {
          const uint32_t lo = uint32_t(b[i]), hi = uint32_t(b[i] >> 32);
          exponential.data_ptr<float>()[i] = dllm::exponential_from_bits(lo, hi);
          gumbel.data_ptr<float>()[i] = dllm::gumbel_from_bits(lo, hi);
        }
        return std::make_tuple(exponential, gumbel);
      },
      "The kernels' Exp(1) and Gumbel(0, 1) variates from 64 random bits each (dllm/philox.h).");
  m.def(
      "philox_pair",
      [](uint64_t seed, uint64_t offset, uint64_t row, uint32_t pair, uint32_t stream) {
        const dllm::U32x4 r = dllm::philox_pair(seed, offset, row, pair, static_cast<dllm::RngStream>(stream));
        return std::make_tuple(r.x, r.y, r.z, r.w);
      },
      "The 128 random bits of a pair of logical indices (dllm/philox.h).");
  m.def(
      "log_poly",
      [](const at::Tensor& x) {
        TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous(), "x: contiguous float32");
        at::Tensor out = at::empty_like(x);
        for (int64_t i = 0; i < x.numel(); ++i) out.data_ptr<float>()[i] = dllm::log_poly(x.data_ptr<float>()[i]);
        return out;
      },
      "The kernels' log (dllm/philox.h) of positive normal floats.");
  m.def(
      "set_capturing", [](bool on) { dllm::binding::capturing = on; },
      "Makes the CUDA bindings behave as under CUDA-graph capture: the Philox key is read through "
      "pointers, and device error words are not read back.");
  m.def(
      "set_gpu_behind", [](bool on) { dllm::binding::gpu_behind = on; },
      "While on, the device error words of the calls made do not arrive on the host until turned off "
      "or waited for, as when the GPU runs behind the host.");
  m.def("raise_pending_errors", &dllm::binding::raise_pending_errors,
        "dllm.ops.raise_pending_errors of the emulated calls.");
}
