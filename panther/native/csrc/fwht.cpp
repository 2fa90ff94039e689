// Orthonormal fast Walsh-Hadamard transform, in-place butterflies on each row.
//
// A row of up to a few thousand elements lives in L1/L2 for all log2(n) stages, so the transform
// costs one read and one write of the input instead of log2(n) full passes with temporaries.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"

#include <cmath>

namespace panther {
namespace {

template <typename T>
void fwht_row(T* __restrict__ x, int64_t n, T scale) {
  if (n == 1) {
    x[0] *= scale;
    return;
  }
  // The first two stages are fused as a radix-4 step: short inner loops do not vectorise, so
  // doing them on groups of four keeps the scalar work to a single pass.
  int64_t h = 1;
  if (n >= 4) {
    for (int64_t i = 0; i < n; i += 4) {
      const T a = x[i], b = x[i + 1], c = x[i + 2], d = x[i + 3];
      const T s0 = a + b, d0 = a - b, s1 = c + d, d1 = c - d;
      x[i] = s0 + s1;
      x[i + 1] = d0 + d1;
      x[i + 2] = s0 - s1;
      x[i + 3] = d0 - d1;
    }
    h = 4;
  }
  for (; h < n; h <<= 1) {
    const bool last = (h << 1) == n;
    for (int64_t i = 0; i < n; i += 2 * h) {
      T* __restrict__ a = x + i;
      T* __restrict__ b = x + i + h;
      if (last) {
        // The normalisation rides on the last stage instead of costing an extra pass.
#pragma omp simd
        for (int64_t j = 0; j < h; ++j) {
          const T u = a[j], v = b[j];
          a[j] = (u + v) * scale;
          b[j] = (u - v) * scale;
        }
      } else {
#pragma omp simd
        for (int64_t j = 0; j < h; ++j) {
          const T u = a[j], v = b[j];
          a[j] = u + v;
          b[j] = u - v;
        }
      }
    }
  }
  if (n == 4) {
    // Only the fused radix-4 step ran, so the normalisation is still pending.
    for (int64_t j = 0; j < 4; ++j) x[j] *= scale;
  }
}

at::Tensor fwht_cpu(const at::Tensor& x) {
  check_fwht_args(x);
  if (x.scalar_type() != to_compute(x).scalar_type()) {
    // Half precision: butterflies in float32, one rounding at the end.
    return fwht_cpu(to_compute(x)).to(x.scalar_type());
  }
  const int64_t n = x.size(-1);
  at::Tensor out = x.clone(at::MemoryFormat::Contiguous);
  const int64_t rows = n == 0 ? 0 : out.numel() / n;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "panther_fwht", [&] {
    scalar_t* data = out.data_ptr<scalar_t>();
    const scalar_t scale = static_cast<scalar_t>(1.0 / std::sqrt(static_cast<double>(n)));
    // Aim for ~32k elements per task so small problems are not split across threads.
    const int64_t grain = std::max<int64_t>(1, 32768 / n);
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        fwht_row<scalar_t>(data + r * n, n, scale);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(panther, CPU, m) { m.impl("fwht", &fwht_cpu); }

}  // namespace panther
