// CPU kernels that are compiled twice: for the baseline x86-64 instruction set and for
// AVX2 + FMA (DLLM_CPU_ISA=avx2, set by CMake), chosen at run time by cpu_dispatch.cpp. Their
// entry points are named with DLLM_ISA_NAME so the two builds link side by side.
#pragma once

#ifndef DLLM_CPU_ISA
#define DLLM_CPU_ISA base
#endif
#define DLLM_ISA_CAT2(a, b) a##_##b
#define DLLM_ISA_CAT(a, b) DLLM_ISA_CAT2(a, b)
#define DLLM_ISA_NAME(fn) DLLM_ISA_CAT(fn, DLLM_CPU_ISA)
