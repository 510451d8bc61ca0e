// The CUDA emulator stands in for the CUDA headers in translated kernels.
#pragma once
#include "cuda_emulator.h"
