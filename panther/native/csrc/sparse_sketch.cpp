// Sparse sketch (count sketch / SJLT) application without forming the dense m x n matrix.
//
// Forward is a scatter-add inside each batch row (the m outputs of a row stay in cache), so rows are
// independent and run in parallel without atomics. Backward w.r.t. x is the matching gather.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"

#include <array>
#include <tuple>
#include <vector>

namespace panther {
namespace {

// An out-of-range index would write outside the output buffer. The indices are read on the
// calling thread before any output exists, with a plain loop: no tensor ops, no parallel region,
// nothing that could throw from a worker thread.
void check_rows_in_range(const char* op, const at::Tensor& rows, int64_t m) {
  const int64_t* rp = rows.data_ptr<int64_t>();
  const int64_t count = rows.numel();
  int64_t lo = 0, hi = 0;
  bool bad = false;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t r = rp[i];
    if (r < 0 || r >= m) {
      lo = bad ? std::min(lo, r) : r;
      hi = bad ? std::max(hi, r) : r;
      bad = true;
    }
  }
  TORCH_CHECK_VALUE(!bad, op, ": sketch row indices must lie in [0, ", m,
                    "), found out-of-range indices between ", lo, " and ", hi);
}

at::Tensor sparse_apply_cpu(const at::Tensor& x_in, const at::Tensor& rows_in,
                            const at::Tensor& values_in, int64_t m) {
  check_sparse_args(x_in, rows_in, values_in, m);
  const at::Tensor rows = rows_in.contiguous();
  check_rows_in_range("panther::sparse_sketch_apply", rows, m);
  if (x_in.scalar_type() != to_compute(x_in).scalar_type()) {
    // Half precision: the sums run in float32 and are rounded once at the end.
    return sparse_apply_cpu(to_compute(x_in), rows, to_compute(values_in), m)
        .to(x_in.scalar_type());
  }
  const at::Tensor x = x_in.contiguous();
  const at::Tensor values = values_in.contiguous();
  const int64_t B = x.size(0), n = x.size(1), s = rows.size(1);
  at::Tensor out = at::zeros({B, m}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "panther_sparse_apply", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const int64_t* rp = rows.data_ptr<int64_t>();
    const scalar_t* vp = values.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, n * s));
    at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* xr = xp + b * n;
        scalar_t* orow = op + b * m;
        if (s == 1) {
          for (int64_t j = 0; j < n; ++j) orow[rp[j]] += vp[j] * xr[j];
        } else {
          for (int64_t j = 0; j < n; ++j) {
            const scalar_t xj = xr[j];
            const int64_t* rj = rp + j * s;
            const scalar_t* vj = vp + j * s;
            for (int64_t t = 0; t < s; ++t) orow[rj[t]] += vj[t] * xj;
          }
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> sparse_apply_backward_cpu(const at::Tensor& grad_in,
                                                             const at::Tensor& x_in,
                                                             const at::Tensor& rows_in,
                                                             const at::Tensor& values_in,
                                                             std::array<bool, 2> mask) {
  check_sparse_backward_args(grad_in, x_in, rows_in, values_in);
  const at::Tensor rows = rows_in.contiguous();
  check_rows_in_range("panther::sparse_sketch_apply_backward", rows, grad_in.size(1));
  if (x_in.scalar_type() != to_compute(x_in).scalar_type()) {
    auto [gx32, gv32] = sparse_apply_backward_cpu(to_compute(grad_in), to_compute(x_in), rows,
                                                  to_compute(values_in), mask);
    return {gx32.to(x_in.scalar_type()), gv32.to(x_in.scalar_type())};
  }
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor x = x_in.contiguous();
  const at::Tensor values = values_in.contiguous();
  const int64_t B = x.size(0), n = x.size(1), s = rows.size(1), m = grad.size(1);
  at::Tensor gx = at::empty({0}, x.options());
  at::Tensor gv = at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "panther_sparse_apply_backward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const int64_t* rp = rows.data_ptr<int64_t>();
    const scalar_t* vp = values.data_ptr<scalar_t>();
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, n * s));
    if (mask[0]) {
      gx = at::empty({B, n}, x.options());
      scalar_t* gxp = gx.data_ptr<scalar_t>();
      at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          const scalar_t* grow = gp + b * m;
          scalar_t* gxr = gxp + b * n;
          if (s == 1) {
            // Count sketch: a plain gather, which vectorises (hardware gathers with AVX-512).
            _Pragma("omp simd")
            for (int64_t j = 0; j < n; ++j) gxr[j] = vp[j] * grow[rp[j]];
          } else {
            for (int64_t j = 0; j < n; ++j) {
              scalar_t acc = 0;
              for (int64_t t = 0; t < s; ++t) acc += vp[j * s + t] * grow[rp[j * s + t]];
              gxr[j] = acc;
            }
          }
        }
      });
    }
    if (mask[1]) {
      // grad_values[j, t] = sum_b grad[b, rows[j, t]] * x[b, j]: each worker reduces a slice of
      // the batch into its own (n, s) partial, and the partials are summed at the end.
      const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), B));
      at::Tensor partial = at::zeros({workers, n * s}, x.options());
      scalar_t* pp = partial.data_ptr<scalar_t>();
      const int64_t per = (B + workers - 1) / workers;
      at::parallel_for(0, workers, 1, [&](int64_t wb, int64_t we) {
        for (int64_t w = wb; w < we; ++w) {
          scalar_t* acc = pp + w * n * s;
          const int64_t b_end = std::min(B, (w + 1) * per);
          for (int64_t b = w * per; b < b_end; ++b) {
            const scalar_t* grow = gp + b * m;
            const scalar_t* xr = xp + b * n;
            for (int64_t j = 0; j < n; ++j) {
              const scalar_t xj = xr[j];
              for (int64_t t = 0; t < s; ++t) acc[j * s + t] += grow[rp[j * s + t]] * xj;
            }
          }
        }
      });
      gv = partial.sum(0).view({n, s});
    }
  });
  return {gx, gv};
}

}  // namespace

TORCH_LIBRARY_IMPL(panther, CPU, m) {
  m.impl("sparse_sketch_apply", &sparse_apply_cpu);
  m.impl("sparse_sketch_apply_backward", &sparse_apply_backward_cpu);
}

}  // namespace panther
