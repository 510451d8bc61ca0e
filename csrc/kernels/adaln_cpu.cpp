// adaLN on the CPU: a row at a time, the (updated) row held in float32 for the two reductions.
#include <cmath>
#include <vector>

#include "cpu_isa.h"
#include "cpu_rows.h"
#include "dllm/adaln.h"

namespace dllm {
namespace {

template <DType D>
void rows(const AdaLNParams& p, int64_t begin, int64_t end) {
  using L = cpu::Loader<D>;
  using T = typename L::T;
  const int64_t dim = p.dim;
  std::vector<float> row(dim);
  for (int64_t r = begin; r < end; ++r) {
    const int64_t b = r / p.seq;
    const T* x = static_cast<const T*>(p.x) + r * dim;
    if (p.update != nullptr) {
      const T* u = static_cast<const T*>(p.update) + r * dim;
      const float* g = p.gate + b * dim;
      T* next = static_cast<T*>(p.x_next) + r * dim;
      for (int64_t i = 0; i < dim; ++i) row[i] = L::load(x[i]) + g[i] * L::load(u[i]);
      for (int64_t i = 0; i < dim; ++i) {  // normalise the stream as stored: what the next residual adds to
        const T stored = L::store(row[i]);
        next[i] = stored;
        row[i] = L::load(stored);
      }
    } else {
      for (int64_t i = 0; i < dim; ++i) row[i] = L::load(x[i]);
    }
    const float mean = cpu::sum_of(row.data(), dim) / float(dim);
    for (int64_t i = 0; i < dim; ++i) row[i] -= mean;
    const float rstd = 1.0f / std::sqrt(cpu::sum_squares_of(row.data(), dim) / float(dim) + p.eps);
    const float* w = p.w + b * dim;
    const float* sh = p.shift + b * dim;
    T* out = static_cast<T*>(p.out) + r * dim;
    for (int64_t i = 0; i < dim; ++i) out[i] = L::store(row[i] * rstd * w[i] + sh[i]);
  }
}

}  // namespace

void DLLM_ISA_NAME(adaln_cpu)(const AdaLNParams& p, int64_t begin, int64_t end) {
  with_dtype(p.dtype, [&]<DType D>() { rows<D>(p, begin, end); });
}

}  // namespace dllm
