// The emulator's scheduler: blocks one after another, the threads of a block as fibers
// that switch at synchronisation points. See cuda_emulator.h.
#include "cuda_emulator.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include <algorithm>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "emulator_settings.h"

#if defined(__SANITIZE_ADDRESS__)
#include <cstdio>
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define CUEMU_ASAN 1
#endif

namespace cuemu {
namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kSlotBytes = 64;  // per lane and warp-synchronous operation
constexpr int kWarpgroupThreads = 128;
// The shared window's address of the dynamic shared memory: 128 bytes short of a 1024-byte
// boundary, so that a kernel relying on an alignment it did not establish fails.
constexpr uint32_t kWindowBase = 1024 - 128;

struct Barrier {
  int expected = 0, count = 0, acc = 0, result = 0;
  uint64_t generation = 0;
};

struct PendingCopy {
  void* dst;
  const void* src;
  size_t bytes;
  bool valid;
  bool fenced = false;  // a fence.proxy.async of the issuing thread followed its wait
  uint64_t group = 0;   // the issuing thread's commit groups before it (cp_async_wait_own)
};

struct PendingWgmma {
  float* d;
  int n;
  const uint32_t* a;  // null: A is read through a_descriptor
  uint64_t a_descriptor, b_descriptor;
  bool accumulate, trans_a, trans_b, bf16;
};

// A fiber's saved context. On x86-64 a switch saves the callee-saved registers on the fiber's
// stack and swaps stack pointers (tens of nanoseconds); glibc's swapcontext also saves the
// signal mask with a system call on every switch, which made the emulator 5x slower.
#if defined(__x86_64__)
extern "C" void cuemu_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .globl cuemu_switch
  .type cuemu_switch, @function
cuemu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cuemu_switch, .-cuemu_switch
)");
struct Context {
  void* sp = nullptr;
};
#else
struct Context {
  ucontext_t uc;
};
#endif

struct Fiber {
  Context context;
  ThreadIndex index;
  int linear = 0;
  bool done = false;
  const char* waiting_at = nullptr;  // "block" or "warp" while waiting at a barrier
  const Barrier* waiting_on = nullptr;
  uint64_t waiting_generation = 0;
  int warp_parity = 0, warpgroup_parity = 0;
  // cp.async copies issued, and those a wait completed: other threads may read the latter only
  // after a block barrier, so in the strict mode they land when the next one releases.
  std::vector<PendingCopy> pending, waited;
  uint64_t commits = 0;  // cp.async.commit_group calls (cp_async_commit)
  // Landed cp.async copies into dynamic shared memory that no fence.proxy.async of this thread
  // has yet made visible to the async proxy (wgmma's operand reads).
  std::vector<std::pair<unsigned char*, size_t>> unfenced;
  // Plain stores that wgmma will read (generic_shared_store), and those a fence.proxy.async of
  // this thread has ordered: the latter reach the async proxy when the thread next passes a
  // barrier of its block or warpgroup, since the other threads' wgmma reads them only after one.
  // A wgmma issued while either list holds stores fails.
  std::vector<std::pair<unsigned char*, size_t>> stored, fenced_stores;
  // wgmma issued since the last commit, and the committed groups not yet retired by a wait.
  std::vector<PendingWgmma> wgmma_open;
  std::vector<std::vector<PendingWgmma>> wgmma_groups;
};

struct State {
  dim3 grid, block;
  int threads = 0;
  void (*body)(void*) = nullptr;
  void* arg = nullptr;
  std::vector<Fiber> fibers;
  std::vector<std::unique_ptr<char[]>> stacks;
  Fiber* current = nullptr;
  Context scheduler;
  uint64_t progress = 0;
  std::string error;
  Barrier block_barrier;
  std::vector<Barrier> warp_barriers;
  std::vector<int> warp_live, warp_size;
  std::vector<unsigned char> warp_slots;  // [warp][parity][lane][kSlotBytes]
  std::vector<Barrier> warpgroup_barriers;
  // bar.sync of one warpgroup (sync_warpgroup): apart from the wgmma exchanges' barriers, so that
  // threads split between the two wait forever, as on the GPU, instead of pairing up.
  std::vector<Barrier> warpgroup_named_barriers;
  std::vector<int> warpgroup_live, warpgroup_size;
  std::vector<unsigned char> warpgroup_slots;  // [warpgroup][parity][thread][kSlotBytes]
  std::unique_ptr<unsigned char[]> smem_storage;
  size_t smem_storage_bytes = 0;
  unsigned char* smem = nullptr;
  // Dynamic shared memory as the async proxy sees it: what wgmma reads. cp.async writes reach it
  // only through their thread's fence.proxy.async.
  std::unique_ptr<unsigned char[]> async_view;
  size_t smem_bytes = 0;
  uint64_t block_serial = 0;
  struct SharedVariable {
    size_t bytes;
    uint64_t poisoned_in;  // block_serial
  };
  std::unordered_map<void*, SharedVariable> shared_variables;
  // The block's static __shared__ bytes (those declared so far) and what they may total beside the
  // dynamic shared memory: a GPU counts both against the kernel's limit.
  size_t static_bytes = 0, shared_limit = 0;
  bool opted_in = false;
  std::mt19937_64 order_rng;
};

State st;
std::mutex one_grid_at_a_time;

void fiber_main();

#if defined(__x86_64__)
#if defined(CUEMU_ASAN)
const void* asan_sched_bottom = nullptr;
size_t asan_sched_size = 0;
const void* asan_target_bottom = nullptr;  // the stack of the fiber the scheduler switches to
// to_fiber: the scheduler switches to a fiber (whose stack asan_target_bottom is); otherwise a
// fiber switches back to the scheduler, for good when dying.
void switch_to(Context& from, Context& to, bool to_fiber = false, bool dying = false) {
  void* fake = nullptr;
  if (to_fiber)
    __sanitizer_start_switch_fiber(&fake, asan_target_bottom, kStackBytes);
  else
    __sanitizer_start_switch_fiber(dying ? nullptr : &fake, asan_sched_bottom, asan_sched_size);
  cuemu_switch(&from.sp, to.sp);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
}
#else
void switch_to(Context& from, Context& to, bool = false, bool = false) { cuemu_switch(&from.sp, to.sp); }
#endif

[[noreturn]] void fiber_entry() {
#if defined(CUEMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &asan_sched_bottom, &asan_sched_size);
#endif
  fiber_main();
  std::abort();  // fiber_main switches away for good
}

void start_context(Context& c, char* stack, size_t bytes) {
#if defined(CUEMU_ASAN)
  ASAN_UNPOISON_MEMORY_REGION(stack, bytes);  // frames of the last block's fibers never returned
#endif
  // The stack cuemu_switch pops: six registers, then fiber_entry as the return address, placed
  // so that fiber_entry starts with the stack alignment of a called function.
  auto* top = reinterpret_cast<uintptr_t*>((reinterpret_cast<uintptr_t>(stack + bytes) & ~uintptr_t(15)) - 8);
  *--top = reinterpret_cast<uintptr_t>(&fiber_entry);
  for (int i = 0; i < 6; ++i) *--top = 0;
  c.sp = top;
}
#else
void switch_to(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }

void start_context(Context& c, char* stack, size_t bytes) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, fiber_main, 0);
}
#endif

void yield() { switch_to(st.current->context, st.scheduler); }

unsigned char* async_view_of(void* p) {
  auto* c = static_cast<unsigned char*>(p);
  return c >= st.smem && c < st.smem + st.smem_bytes ? st.async_view.get() + (c - st.smem) : nullptr;
}

void flush_copies(Fiber& owner, std::vector<PendingCopy>& copies) {
  for (const PendingCopy& c : copies) {
    if (c.valid)
      std::memcpy(c.dst, c.src, c.bytes);
    else
      std::memset(c.dst, 0, c.bytes);
    if (unsigned char* seen = async_view_of(c.dst)) {
      // Copies landing at issue (the earliest) reach the async proxy at once too, so that a wgmma
      // still in flight reads a refilled buffer's new contents.
      if (c.fenced || !settings().defer_async_copies)
        std::memcpy(seen, c.dst, c.bytes);
      else
        owner.unfenced.emplace_back(static_cast<unsigned char*>(c.dst), c.bytes);
    }
  }
  copies.clear();
}

void release(Barrier& b) {
  if (&b == &st.block_barrier) {
    for (int i = 0; i < st.threads; ++i) flush_copies(st.fibers[i], st.fibers[i].waited);
  }
  b.result = b.acc;
  b.count = 0;
  ++b.generation;
  ++st.progress;
}

int arrive(Barrier& b, int predicate, const char* where) {
  if (b.count == 0) b.acc = 0;
  b.acc |= predicate != 0;
  const uint64_t generation = b.generation;
  ++b.count;
  ++st.progress;
  if (b.count == b.expected) {
    release(b);
  } else {
    Fiber& f = *st.current;
    f.waiting_at = where;
    f.waiting_on = &b;
    f.waiting_generation = generation;
    yield();  // the scheduler resumes this fiber only once the barrier has released
    f.waiting_at = nullptr;
    f.waiting_on = nullptr;
  }
  return b.result;
}

void leave(Barrier& b) {
  --b.expected;
  if (b.count > 0 && b.count == b.expected) release(b);
}

void fiber_main() {
  Fiber* f = st.current;
  st.body(st.arg);
  if (!f->wgmma_open.empty() || !f->wgmma_groups.empty()) fail("thread exits with wgmma not retired by a wait_group");
  flush_copies(*f, f->pending);
  flush_copies(*f, f->waited);
  f->done = true;
  const int warp = f->linear / 32, warpgroup = f->linear / kWarpgroupThreads;
  leave(st.block_barrier);
  leave(st.warp_barriers[warp]);
  leave(st.warpgroup_barriers[warpgroup]);
  leave(st.warpgroup_named_barriers[warpgroup]);
  --st.warp_live[warp];
  --st.warpgroup_live[warpgroup];
  ++st.progress;
  Context finished;
  switch_to(finished, st.scheduler, false, true);
}


std::string deadlock_report() {
  int at_block = 0, at_warp = 0;
  for (const Fiber& f : st.fibers) {
    if (f.done || !f.waiting_at) continue;
    (std::strcmp(f.waiting_at, "block") == 0 ? at_block : at_warp) += 1;
  }
  return "deadlock in block (" + std::to_string(st.fibers[0].index.block_idx.x) + ", " +
         std::to_string(st.fibers[0].index.block_idx.y) + ", " + std::to_string(st.fibers[0].index.block_idx.z) +
         "): " + std::to_string(at_block) + " threads wait at a block barrier (" +
         std::to_string(st.block_barrier.count) + " of " + std::to_string(st.block_barrier.expected) +
         " arrived), " + std::to_string(at_warp) + " at warp-synchronous operations";
}

void run_block(dim3 block_idx) {
  ++st.block_serial;
  st.static_bytes = 0;
  if (st.smem_bytes) {
    std::memset(st.smem, 0xff, st.smem_bytes);
    std::memset(st.async_view.get(), 0xff, st.smem_bytes);
  }
  const int warps = (st.threads + 31) / 32;
  st.block_barrier = Barrier{st.threads};
  st.warp_barriers.assign(warps, Barrier{});
  st.warp_live.assign(warps, 0);
  st.warp_size.assign(warps, 0);
  const int warpgroups = (st.threads + kWarpgroupThreads - 1) / kWarpgroupThreads;
  st.warpgroup_barriers.assign(warpgroups, Barrier{});
  st.warpgroup_named_barriers.assign(warpgroups, Barrier{});
  st.warpgroup_live.assign(warpgroups, 0);
  st.warpgroup_size.assign(warpgroups, 0);
  for (int i = 0; i < st.threads; ++i) {
    Fiber& f = st.fibers[i];
    f.index.thread_idx = dim3(i % st.block.x, (i / st.block.x) % st.block.y, i / (st.block.x * st.block.y));
    f.index.block_idx = block_idx;
    f.linear = i;
    f.done = false;
    f.waiting_at = nullptr;
    f.waiting_on = nullptr;
    f.warp_parity = 0;
    f.warpgroup_parity = 0;
    f.pending.clear();
    f.waited.clear();
    f.commits = 0;
    f.unfenced.clear();
    f.stored.clear();
    f.fenced_stores.clear();
    f.wgmma_open.clear();
    f.wgmma_groups.clear();
    start_context(f.context, st.stacks[i].get(), kStackBytes);
    ++st.warp_live[i / 32];
    ++st.warp_size[i / 32];
    ++st.warp_barriers[i / 32].expected;
    ++st.warpgroup_live[i / kWarpgroupThreads];
    ++st.warpgroup_size[i / kWarpgroupThreads];
    ++st.warpgroup_barriers[i / kWarpgroupThreads].expected;
    ++st.warpgroup_named_barriers[i / kWarpgroupThreads].expected;
  }
  std::vector<int> order(st.threads);
  std::iota(order.begin(), order.end(), 0);
  if (settings().order == Order::kReverse) std::reverse(order.begin(), order.end());
  // In the lagging-warp order one warp, drawn per block, runs only when no other thread can
  // move, so the others run as far ahead of it as the barriers allow: a missing barrier between
  // a write and a read of shared memory by different warps (either way round) then shows.
  const int lagging = settings().order == Order::kLaggingWarp && warps > 1 ? int(st.order_rng() % warps) : -1;
  int live = st.threads;
  bool stalled = false;
  while (live > 0) {
    const bool everyone = lagging < 0 || stalled;
    const uint64_t before = st.progress;
    for (int i : order) {
      Fiber& f = st.fibers[i];
      if (f.done || (f.waiting_on && f.waiting_on->generation == f.waiting_generation)) continue;
      if (!everyone && i / 32 == lagging) continue;
      st.current = &f;
#if defined(CUEMU_ASAN)
      asan_target_bottom = st.stacks[i].get();
#endif
      switch_to(st.scheduler, f.context, true);
      st.current = nullptr;
      if (!st.error.empty()) throw std::runtime_error("CUDA emulator: " + st.error);
    }
    live = int(std::count_if(st.fibers.begin(), st.fibers.begin() + st.threads,
                             [](const Fiber& f) { return !f.done; }));
    stalled = st.progress == before;
    if (live > 0 && stalled && everyone) throw std::runtime_error("CUDA emulator: " + deadlock_report());
  }
}

}  // namespace

Settings& settings() {
  static Settings s;
  return s;
}

size_t grid_stride_blocks() { return settings().grid_stride_blocks; }

const ThreadIndex& self() { return st.current->index; }
const dim3& block_dim() { return st.block; }
const dim3& grid_dim() { return st.grid; }
int lane_id() { return st.current->linear % 32; }

void fail(const char* what) {
  const ThreadIndex& i = st.current->index;
  st.error = std::string(what) + " (thread " + std::to_string(i.thread_idx.x) + ", block " +
             std::to_string(i.block_idx.x) + ", " + std::to_string(i.block_idx.y) + ", " +
             std::to_string(i.block_idx.z) + ")";
  Context failed;
  switch_to(failed, st.scheduler, false, true);
  std::abort();  // unreachable: the scheduler never resumes a failed fiber
}

std::unordered_map<const void*, size_t>& dynamic_smem_limits() {
  static std::unordered_map<const void*, size_t> limits;
  return limits;
}

void allow_dynamic_smem(const void* kernel, int bytes) { dynamic_smem_limits()[kernel] = size_t(bytes); }

void run_grid(const void* kernel, dim3 grid, dim3 block, size_t dynamic_smem, void (*body)(void*), void* arg) {
  const std::lock_guard<std::mutex> lock(one_grid_at_a_time);
  const int threads = int(block.x * block.y * block.z);
  if (threads < 1 || threads > 1024 || block.z > 64) throw std::runtime_error("CUDA emulator: invalid block size");
  // The hardware refuses these launches ("invalid configuration argument"), so the emulator does.
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
    throw std::runtime_error("CUDA emulator: invalid grid (" + std::to_string(grid.x) + ", " + std::to_string(grid.y) +
                             ", " + std::to_string(grid.z) + "): each dimension must be >= 1, y and z <= 65535");
  const auto opted_in = dynamic_smem_limits().find(kernel);
  const size_t allowed = opted_in == dynamic_smem_limits().end() ? 48 * 1024 : opted_in->second;
  const size_t limit = std::min<size_t>(227 * 1024, allowed);
  if (dynamic_smem > limit)
    throw std::runtime_error("CUDA emulator: a launch asks for " + std::to_string(dynamic_smem) +
                             " bytes of dynamic shared memory; the kernel allows " + std::to_string(limit) +
                             " (48 KB unless cudaFuncSetAttribute raised it; 227 KB at most)");
  // Static shared memory counts too (shared_region checks it as the kernel declares it): without
  // the opt-in, static plus dynamic must fit 48 KB (the default maximum dynamic size is 48 KB less
  // the static size); with it, static plus the opted-in dynamic size must fit 227 KB.
  st.opted_in = opted_in != dynamic_smem_limits().end();
  st.shared_limit = st.opted_in ? 227 * 1024 - std::min<size_t>(227 * 1024, allowed) : 48 * 1024 - dynamic_smem;
  st.grid = grid;
  st.block = block;
  st.threads = threads;
  st.body = body;
  st.arg = arg;
  st.error.clear();
  st.order_rng.seed(settings().seed);
  if (int(st.fibers.size()) < threads) st.fibers.resize(threads);
  while (int(st.stacks.size()) < threads) st.stacks.emplace_back(new char[kStackBytes]);
  st.warp_slots.assign(size_t((threads + 31) / 32) * 2 * 32 * kSlotBytes, 0);
  st.warpgroup_slots.assign(size_t((threads + kWarpgroupThreads - 1) / kWarpgroupThreads) * 2 * kWarpgroupThreads * kSlotBytes, 0);
#if defined(CUEMU_ASAN)
  if (st.smem_storage) ASAN_UNPOISON_MEMORY_REGION(st.smem_storage.get(), st.smem_storage_bytes);
#endif
  st.smem_storage.reset(new unsigned char[dynamic_smem + 128]);
  st.smem = st.smem_storage.get() + (128 - reinterpret_cast<uintptr_t>(st.smem_storage.get()) % 128) % 128;
  st.smem_bytes = dynamic_smem;
#if defined(CUEMU_ASAN)
  // The alignment padding around the dynamic shared memory: a kernel touching it is out of bounds.
  st.smem_storage_bytes = dynamic_smem + 128;
  ASAN_POISON_MEMORY_REGION(st.smem_storage.get(), st.smem - st.smem_storage.get());
  ASAN_POISON_MEMORY_REGION(st.smem + dynamic_smem, st.smem_storage.get() + dynamic_smem + 128 - (st.smem + dynamic_smem));
#endif
  st.async_view.reset(new unsigned char[dynamic_smem + 1]);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) run_block(dim3(x, y, z));
  ++settings().grids_run;
}

void* dynamic_shared() { return st.smem; }

void shared_region(void* p, size_t bytes) {
  State::SharedVariable& v = st.shared_variables[p];
  if (v.poisoned_in == st.block_serial) return;
  std::memset(p, 0xff, bytes);
  v = {bytes, st.block_serial};
  st.static_bytes += bytes;
  if (st.static_bytes > st.shared_limit)
    fail(st.opted_in ? "static __shared__ variables and the opted-in dynamic shared memory exceed 227 KB"
                     : "static __shared__ variables and the dynamic shared memory exceed 48 KB "
                       "(a launch the GPU refuses without cudaFuncSetAttribute)");
}

namespace {
void publish_fenced_stores() {
  Fiber& f = *st.current;
  for (const auto& [generic, bytes] : f.fenced_stores) std::memcpy(async_view_of(generic), generic, bytes);
  f.fenced_stores.clear();
}
}  // namespace

int sync_block(int predicate, bool reduce_or) {
  const int any = arrive(st.block_barrier, predicate, "block");
  publish_fenced_stores();
  return reduce_or ? any : 0;
}

// Publishes `bytes` of this thread's data to the `threads` threads of its group (a warp or a
// warpgroup) and copies all of theirs into `all`, in thread order. Consecutive exchanges
// alternate between two slot sets, so one barrier each suffices: a thread can write set p again
// only after the next exchange's barrier, which every thread reaches only after reading set p.
void group_exchange(Barrier& barrier, unsigned char* slots, int& parity, int threads, const void* mine, void* all,
                    size_t bytes, const char* where) {
  if (bytes > kSlotBytes) fail("exchange of more than 64 bytes a thread");
  slots += size_t(parity) * threads * kSlotBytes;
  parity ^= 1;
  std::memcpy(slots + (st.current->linear % threads) * kSlotBytes, mine, bytes);
  arrive(barrier, 0, where);
  for (int i = 0; i < threads; ++i)
    std::memcpy(static_cast<unsigned char*>(all) + i * bytes, slots + i * kSlotBytes, bytes);
}

void warp_exchange(const void* mine, void* all, size_t bytes, unsigned mask) {
  if (mask != 0xffffffffu) fail("warp-synchronous operation with a partial mask (not emulated)");
  const int warp = st.current->linear / 32;
  if (st.warp_size[warp] != 32 || st.warp_live[warp] != 32)
    fail("warp-synchronous operation with mask 0xffffffff in a warp with exited or missing lanes");
  group_exchange(st.warp_barriers[warp], st.warp_slots.data() + size_t(warp) * 2 * 32 * kSlotBytes,
                 st.current->warp_parity, 32, mine, all, bytes, "warp");
}

// Whether [p, p + bytes) lies in this block's shared memory (dynamic or a __shared__ variable).
static bool in_shared(const void* p, size_t bytes) {
  const auto* c = static_cast<const unsigned char*>(p);
  if (c >= st.smem && c + bytes <= st.smem + st.smem_bytes) return true;
  for (const auto& [variable, info] : st.shared_variables) {
    const auto* v = static_cast<const unsigned char*>(variable);
    if (c >= v && c + bytes <= v + info.bytes) return true;
  }
  return false;
}

// Under ASan, aborts with its report when [p, p + bytes), which `what` reads, holds a poisoned byte
// (past an allocation or freed): the asynchronous copies read outside the instrumented code.
static void check_readable([[maybe_unused]] const char* what, [[maybe_unused]] const void* p, [[maybe_unused]] size_t bytes) {
#if defined(CUEMU_ASAN)
  if (void* bad = __asan_region_is_poisoned(const_cast<void*>(p), bytes)) {
    std::fprintf(stderr, "==CUEMU== %s of %zu bytes from %p reads poisoned byte %p\n", what, bytes, p, bad);
    __asan_describe_address(bad);
    __sanitizer_print_stack_trace();
    std::abort();
  }
#endif
}

void cp_async(void* dst, const void* src, size_t bytes, bool valid) {
  if (!in_shared(dst, bytes)) fail("cp.async destination outside the block's shared memory");
  if (reinterpret_cast<uintptr_t>(dst) % bytes != 0 || (valid && reinterpret_cast<uintptr_t>(src) % bytes != 0))
    fail("misaligned address in cp.async");
  if (valid) check_readable("cp.async", src, bytes);
  settings().async_copied_bytes += bytes;
  st.current->pending.push_back(PendingCopy{dst, src, bytes, valid, false, st.current->commits});
  if (!settings().defer_async_copies) flush_copies(*st.current, st.current->pending);
}

void prefetch_l2(const void* p, uint32_t bytes) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0 || bytes == 0 || bytes % 16 != 0)
    fail("misaligned address or size in cp.async.bulk.prefetch.L2");
  settings().prefetched_bytes += bytes;
  check_readable("L2 prefetch", p, bytes);
}

}  // namespace cuemu

float atomicAdd(float* p, float v) {
  if (reinterpret_cast<uintptr_t>(p) % 4 != 0) cuemu::fail("misaligned address in a float atomicAdd");
  ++cuemu::settings().float_atomics;
  const float old = *p;
  *p = old + v;
  return old;
}

float2 atomicAdd(float2* p, float2 v) {
  if (reinterpret_cast<uintptr_t>(p) % 8 != 0) cuemu::fail("misaligned address in a float2 atomicAdd");
  cuemu::settings().float_atomics += 2;
  const float2 old = *p;
  p->x += v.x, p->y += v.y;
  return old;
}

namespace cuemu {

void generic_shared_store(void* p, size_t bytes) {
  if (!in_shared(p, bytes)) fail("generic_shared_store outside the block's shared memory");
  if (async_view_of(p) != nullptr) st.current->stored.emplace_back(static_cast<unsigned char*>(p), bytes);
}

void fence_proxy_async() {
  Fiber& f = *st.current;
  for (const auto& [generic, bytes] : f.unfenced) std::memcpy(async_view_of(generic), generic, bytes);
  f.unfenced.clear();
  f.fenced_stores.insert(f.fenced_stores.end(), f.stored.begin(), f.stored.end());
  f.stored.clear();
  for (PendingCopy& c : f.waited) c.fenced = true;
}

void cp_async_commit() { ++st.current->commits; }

void cp_async_wait_own(int newest_pending) {
  Fiber& f = *st.current;
  std::vector<PendingCopy> done, still;
  for (const PendingCopy& c : f.pending) (c.group + uint64_t(newest_pending) < f.commits ? done : still).push_back(c);
  flush_copies(f, done);
  f.pending = std::move(still);
}

void cp_async_wait_all() {
  Fiber& f = *st.current;
  f.waited.insert(f.waited.end(), f.pending.begin(), f.pending.end());
  f.pending.clear();
}

namespace {
float b16_to_float(uint16_t bits, bool bf16) {
  return bf16 ? __bfloat162float(__nv_bfloat16{bits}) : __half2float(__half{bits});
}
}  // namespace

// Fragment layouts as documented in attention_mma.cuh (PTX ISA, mma.m16n8k16), lane = 4 g + t.
void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bool bf16) {
  struct Operands {
    uint32_t a[4], b[2];
  } mine{{a[0], a[1], a[2], a[3]}, {b0, b1}};
  [[gnu::uninitialized]] Operands all[32];
  warp_exchange(&mine, all, sizeof(Operands), 0xffffffffu);
  auto half_of = [](uint32_t word, int col) { return uint16_t(col & 1 ? word >> 16 : word & 0xffff); };
  auto A = [&](int row, int col) {  // 16 x 16
    const int reg = (row >= 8) + 2 * (col >= 8);
    return b16_to_float(half_of(all[4 * (row % 8) + (col % 8) / 2].a[reg], col), bf16);
  };
  auto B = [&](int k, int n) {  // 16 x 8
    return b16_to_float(half_of(all[4 * n + (k % 8) / 2].b[k >= 8], k), bf16);
  };
  const int lane = lane_id(), g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i >= 2), col = 2 * t + (i & 1);
    double acc = c[i];
    for (int k = 0; k < 16; ++k) acc += double(A(row, k)) * double(B(k, col));
    c[i] = float(acc);
  }
}

// Lanes 8i..8i+7 address the rows of matrix i; register i gets matrix i's (row g, cols 2t, 2t+1)
// or, transposed, (rows 2t, 2t+1, col g).
void ldmatrix_x4(uint32_t (&r)[4], const void* p, bool trans) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) fail("ldmatrix row address not 16-byte aligned");
  if (!in_shared(p, 16)) fail("ldmatrix row address outside the block's shared memory");
  [[gnu::uninitialized]] const void* rows[32];
  warp_exchange(&p, rows, sizeof(p), 0xffffffffu);
  const int lane = lane_id(), g = lane / 4, t = lane % 4;
  auto at = [&](int matrix, int row, int col) {
    uint16_t v;
    std::memcpy(&v, static_cast<const unsigned char*>(rows[8 * matrix + row]) + 2 * col, 2);
    return uint32_t(v);
  };
  for (int m = 0; m < 4; ++m)
    r[m] = trans ? (at(m, 2 * t, g) | at(m, 2 * t + 1, g) << 16) : (at(m, g, 2 * t) | at(m, g, 2 * t + 1) << 16);
}

uint32_t shared_window_address(const void* p) {
  const auto* c = static_cast<const unsigned char*>(p);
  if (c < st.smem || c > st.smem + st.smem_bytes)
    fail("shared-window address of a pointer outside dynamic shared memory");
  return kWindowBase + uint32_t(c - st.smem);
}

void sync_warpgroup() {
  const int group = st.current->linear / kWarpgroupThreads;
  if (st.warpgroup_size[group] != kWarpgroupThreads || st.warpgroup_live[group] != kWarpgroupThreads)
    fail("warpgroup barrier in a warpgroup with exited or missing threads");
  arrive(st.warpgroup_named_barriers[group], 0, "warpgroup barrier");
  publish_fenced_stores();
}

namespace {

void warpgroup_exchange(const void* mine, void* all, size_t bytes) {
  const int group = st.current->linear / kWarpgroupThreads;
  if (st.warpgroup_size[group] != kWarpgroupThreads || st.warpgroup_live[group] != kWarpgroupThreads)
    fail("wgmma in a warpgroup with exited or missing threads");
  group_exchange(st.warpgroup_barriers[group],
                 st.warpgroup_slots.data() + size_t(group) * 2 * kWarpgroupThreads * kSlotBytes,
                 st.current->warpgroup_parity, kWarpgroupThreads, mine, all, bytes, "warpgroup");
}

// Element (k, n) of a wgmma operand (B, 16 x N; or A, 16 x 64 with n the row) read through its descriptor (PTX ISA "Matrix
// Descriptor Format"; CUTLASS's canonical GMMA layouts in 16-byte units: K-major SW128
// ((8,n),2):((8,SBO),1), MN-major SW128 ((8,n),(8,k)):((1,LBO),(8,SBO))).
float descriptor_element(uint64_t descriptor, int k, int n, bool trans_b, bool bf16) {
  const uint32_t start = uint32_t(descriptor & 0x3fff) << 4;
  const uint32_t leading = uint32_t((descriptor >> 16) & 0x3fff) << 4;
  const uint32_t stride = uint32_t((descriptor >> 32) & 0x3fff) << 4;
  if ((descriptor >> 62) != 1 || ((descriptor >> 49) & 7) != 0)
    fail("wgmma descriptor: only the 128-byte swizzle with base offset 0 is emulated");
  uint32_t address;
  if (trans_b) {  // MN-major: 64 n values per 128-byte row, 8 k rows per 1024-byte atom
    address = start + (n / 64) * leading + (n % 64) * 2 + (k % 8) * 128 + (k / 8) * stride;
  } else {  // K-major: the 16 k values of one n row, 8 n rows per atom
    if (start % 128 + 32 > 128) fail("wgmma descriptor: a K-major step crosses its 128-byte swizzle row");
    address = start + (n / 8) * stride + (n % 8) * 128 + k * 2;
  }
  address ^= ((address >> 7) & 7) << 4;  // the 128-byte swizzle: bits 4-6 ^= bits 7-9
  if (address < kWindowBase || address + 2 > kWindowBase + st.smem_bytes)
    fail("wgmma operand outside the block's dynamic shared memory");
  uint16_t bits;
  std::memcpy(&bits, st.async_view.get() + (address - kWindowBase), 2);
  return b16_to_float(bits, bf16);
}

// Runs one wgmma for this thread's n / 2 accumulators, exchanging the A fragments and checking
// that the whole warpgroup issued the same instruction.
void run_wgmma(const PendingWgmma& op) {
  struct Issued {
    uint32_t a[4];
    uint64_t a_descriptor, b_descriptor;
    uint32_t flags;
  } mine{{}, op.a ? 0 : op.a_descriptor, op.b_descriptor,
         uint32_t(op.accumulate) | uint32_t(op.trans_b) << 1 | uint32_t(op.bf16) << 2 | uint32_t(op.a != nullptr) << 3 |
             uint32_t(op.trans_a) << 4 | uint32_t(op.n) << 5};
  [[gnu::uninitialized]] Issued all[kWarpgroupThreads];
  if (op.a) std::memcpy(mine.a, op.a, sizeof(mine.a));
  warpgroup_exchange(&mine, all, sizeof(Issued));
  for (const Issued& other : all)
    if (other.a_descriptor != mine.a_descriptor || other.b_descriptor != mine.b_descriptor || other.flags != mine.flags)
      fail("wgmma: the threads of a warpgroup issued different instructions");
  const int thread = st.current->linear % kWarpgroupThreads, warp = thread / 32, g = (thread % 32) / 4, t = thread % 4;
  auto half_of = [](uint32_t word, int col) { return uint16_t(col & 1 ? word >> 16 : word & 0xffff); };
  // A rows 16 warp + g and + 8 (the m16n8k16 A layout of each warp), B columns 8 j + 2 t (+ 1).
  [[gnu::uninitialized]] double a[2][16], b[16][16];
  for (int h = 0; h < 2; ++h)
    for (int k = 0; k < 16; ++k) {
      const int row = 16 * warp + g + 8 * h;
      if (op.a) {
        const Issued& owner = all[32 * warp + 4 * g + (k % 8) / 2];
        a[h][k] = b16_to_float(half_of(owner.a[h + 2 * (k >= 8)], k), op.bf16);
      } else {
        a[h][k] = descriptor_element(op.a_descriptor, k, row, op.trans_a, op.bf16);
      }
    }
  const int columns = op.n / 4;  // this thread's: two of every 8
  for (int c = 0; c < columns; ++c)
    for (int k = 0; k < 16; ++k)
      b[c][k] = descriptor_element(op.b_descriptor, k, 8 * (c / 2) + 2 * t + c % 2, op.trans_b, op.bf16);
  for (int i = 0; i < op.n / 2; ++i) {
    const int h = (i / 2) % 2, c = 2 * (i / 4) + i % 2;
    double acc = op.accumulate ? op.d[i] : 0.0;
    for (int k = 0; k < 16; ++k) acc += a[h][k] * b[c][k];
    op.d[i] = float(acc);
  }
}

}  // namespace

void wgmma(float* d, int n, const uint32_t* a, uint64_t a_descriptor, uint64_t b_descriptor, bool accumulate,
           bool trans_a, bool trans_b, bool bf16) {
  if (n % 8 != 0 || n < 8 || n > 64) fail("wgmma: only N = 8 .. 64 is emulated");
  if (trans_a && a != nullptr) fail("wgmma: a transposed A must come from shared memory");
  // Read at the wait, a product would see stores that a barrier published only after its issue:
  // the hardware's may start reading at once.
  if (!st.current->stored.empty() || !st.current->fenced_stores.empty())
    fail("wgmma issued before this thread's operand stores were fenced and published by a barrier");
  st.current->wgmma_open.push_back(
      PendingWgmma{d, n, a, a_descriptor, b_descriptor, accumulate, trans_a, trans_b, bf16});
}

void wgmma_commit_group() {
  Fiber& f = *st.current;
  f.wgmma_groups.push_back(std::move(f.wgmma_open));
  f.wgmma_open.clear();
}

void wgmma_wait_group(int pending) {
  Fiber& f = *st.current;
  while (int(f.wgmma_groups.size()) > pending) {
    const std::vector<PendingWgmma> group = std::move(f.wgmma_groups.front());
    f.wgmma_groups.erase(f.wgmma_groups.begin());
    for (const PendingWgmma& op : group) run_wgmma(op);
  }
}

}  // namespace cuemu
