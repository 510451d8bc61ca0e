// Included before a binding file of csrc/torch: its CPU registrations are dropped (dllm._C has
// them) and its CUDA registrations become the CPU kernels of the `dllm_emu` namespace, so that
// torch.ops.dllm_emu.<op> on CPU tensors runs the shipped CUDA binding and CUDA kernel in the
// emulator. build.py defines the dllm_emu schemas by copying dllm's.
#pragma once
#include <torch/library.h>

#undef TORCH_LIBRARY_IMPL
#define TORCH_LIBRARY_IMPL(ns, key, m) DLLM_EMU_IMPL_##key(m)
#define DLLM_EMU_IMPL_CPU(m) \
  [[maybe_unused]] static void C10_CONCATENATE(dllm_emu_dropped_, __COUNTER__)(torch::Library & m)
#define DLLM_EMU_IMPL_CUDA(m) _TORCH_LIBRARY_IMPL(dllm_emu, CPU, m, C10_UID)
#define DLLM_EMU_IMPL_ADInplaceOrView(m) \
  [[maybe_unused]] static void C10_CONCATENATE(dllm_emu_dropped_, __COUNTER__)(torch::Library & m)
