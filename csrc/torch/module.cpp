// The Python module dllm._C. Importing it loads this library, whose static TORCH_LIBRARY
// initialisers register every op; the ops are reached through torch.ops.dllm, never through
// pybind11 functions (dynamo cannot trace those, so each call would break a compiled graph).
#include <pybind11/pybind11.h>

PYBIND11_MODULE(_C, m) {
  m.doc() = "dllm compiled core: registers the torch.ops.dllm operators";
  m.attr("with_cuda") = pybind11::bool_(DLLM_WITH_CUDA);
  m.attr("with_wgmma") = pybind11::bool_(DLLM_WITH_WGMMA);
}
