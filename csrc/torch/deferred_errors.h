// Errors that CUDA kernels find in their inputs' values (NaN logits, tokens outside the
// vocabulary, bad per-row temperatures or sigmas), raised without making the host wait.
//
// A kernel lowers a device error word; reading it back at once would stall the host until the
// GPU reaches the call, and the GPU would then idle while the host queues the next work. Instead
// the word is copied to pinned host memory behind the call, and every later call of these ops
// raises the oldest error among the words that have arrived; raise_pending_errors() waits for
// them. Under CUDA-graph capture nothing is checked (replays could not report), as before.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>

namespace dllm::binding {

// A device int64 on its way to the host, copied behind the work queued so far on the current stream.
class DeviceWord {
 public:
  virtual ~DeviceWord() = default;
  virtual bool arrived() = 0;  // the copy has landed; never waits
  virtual bool wait() = 0;     // waits for it; false where waiting is not allowed (during graph capture)
  virtual int64_t value() const = 0;
};

// nullptr during CUDA-graph capture. deferred_errors_cuda.cpp (the CUDA emulator has its own).
std::unique_ptr<DeviceWord> copy_to_host_later(const at::Tensor& word);

// Queues a call's word (copy_to_host_later's; nullptr: nothing) for `raise`, which throws the
// call's error for the value read back or returns when it holds none, then raises what has arrived.
void check_later(std::unique_ptr<DeviceWord> word, std::function<void(int64_t)> raise);

// Raises the oldest error among the queued words that have arrived; returns when there is none.
// The first error raised drops the rest of the queue.
void raise_arrived_errors();

// Waits for the words queued so far, by any thread, and raises the oldest error (except during
// graph capture).
void raise_pending_errors();

}  // namespace dllm::binding
