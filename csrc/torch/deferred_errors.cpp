#include "deferred_errors.h"

#include <deque>
#include <mutex>
#include <utility>

namespace dllm::binding {
namespace {

struct Pending {
  uint64_t id = 0;
  std::shared_ptr<DeviceWord> word;  // shared: a thread may wait on it while another takes it
  std::function<void(int64_t)> raise;
};

struct Queue {
  std::mutex mutex;
  std::deque<Pending> pending;
  uint64_t last_id = 0;
};

// Never destroyed: its events and pinned buffers must not be freed after CUDA shuts down at exit.
Queue& queue() {
  static Queue* q = new Queue;
  return *q;
}

enum class Take { kNone, kTaken, kTakenElsewhere };

// Takes the oldest entry, if it was queued by `last_id`, once its word has arrived (waiting for it
// if `wait`).
Take take_oldest(bool wait, uint64_t last_id, Pending& out) {
  Queue& q = queue();
  std::shared_ptr<DeviceWord> word;
  {
    const std::lock_guard<std::mutex> lock(q.mutex);
    if (q.pending.empty() || q.pending.front().id > last_id) return Take::kNone;
    word = q.pending.front().word;
  }
  if (!(wait ? word->wait() : word->arrived())) return Take::kNone;
  const std::lock_guard<std::mutex> lock(q.mutex);
  if (q.pending.empty() || q.pending.front().word != word) return Take::kTakenElsewhere;
  out = std::move(q.pending.front());
  q.pending.pop_front();
  return Take::kTaken;
}

// Raises the taken entries' first error, saying so when it is an earlier call's (not own_id's).
// It drops the entries still queued: later calls on the same bad values would only repeat it, and
// raise it again in the caller's next, unrelated call.
void raise_taken(bool wait, uint64_t last_id, uint64_t own_id) {
  for (;;) {
    Pending p;
    const Take t = take_oldest(wait, last_id, p);
    if (t == Take::kNone) return;
    if (t != Take::kTaken) continue;
    try {
      p.raise(p.word->value());
    } catch (c10::Error& e) {
      if (p.id != own_id)
        e.add_context(
            "found on the GPU after that earlier call returned: dllm's CUDA ops do not wait for their checks, "
            "a later call raises what they found, and dllm.ops.raise_pending_errors() waits for them");
      Queue& q = queue();
      const std::lock_guard<std::mutex> lock(q.mutex);
      q.pending.clear();
      throw;
    }
  }
}

uint64_t last_queued() {
  Queue& q = queue();
  const std::lock_guard<std::mutex> lock(q.mutex);
  return q.last_id;
}

}  // namespace

void check_later(std::unique_ptr<DeviceWord> host, std::function<void(int64_t)> raise) {
  if (!host) return;
  Queue& q = queue();
  uint64_t id;
  {
    const std::lock_guard<std::mutex> lock(q.mutex);
    id = ++q.last_id;
    q.pending.push_back({id, std::move(host), std::move(raise)});
  }
  raise_taken(/*wait=*/false, UINT64_MAX, id);
}

void raise_arrived_errors() { raise_taken(/*wait=*/false, UINT64_MAX, /*own_id=*/0); }

// Only the calls made before: other threads may keep queueing.
void raise_pending_errors() { raise_taken(/*wait=*/true, last_queued(), /*own_id=*/0); }

}  // namespace dllm::binding
