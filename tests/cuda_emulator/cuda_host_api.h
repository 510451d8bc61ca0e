// The host-side CUDA types and runtime calls that dllm's kernel launchers and CUDA bindings use,
// for the CPU emulator: the device looks like an H100 (compute capability 9.0, 132 SMs).
#pragma once
#include <cstddef>

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};

using cudaStream_t = struct CUstream_st*;
enum cudaError_t { cudaSuccess = 0, cudaErrorLaunchFailure = 719 };
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct cudaDeviceProp {
  int major = 9, minor = 0, multiProcessorCount = 132;
};
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr, int) {
  *value = cudaDeviceProp{}.multiProcessorCount;
  return cudaSuccess;
}
namespace cuemu {
// Launches above 48 KB of dynamic shared memory fail on a GPU unless the kernel opted in.
void allow_dynamic_smem(const void* kernel, int bytes);
}  // namespace cuemu
template <typename Kernel>
cudaError_t cudaFuncSetAttribute(Kernel kernel, cudaFuncAttribute attribute, int value) {
  if (attribute == cudaFuncAttributeMaxDynamicSharedMemorySize)
    cuemu::allow_dynamic_smem(reinterpret_cast<const void*>(kernel), value);
  return cudaSuccess;
}
