// Sparse sketch (count sketch / SJLT) application without forming the dense m x n matrix.
//
// Forward is a scatter-add inside each batch row (the m outputs of a row stay in cache), so rows are
// independent and run in parallel without atomics. Backward w.r.t. x is the matching gather.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <tuple>
#include <vector>

namespace panther {
namespace {

void check_sparse(const at::Tensor& x, const at::Tensor& rows, const at::Tensor& values,
                  int64_t m) {
  TORCH_CHECK_VALUE(x.dim() == 2, "panther::sparse_sketch_apply expects a 2-D input, got ", x.dim(),
              "-D");
  TORCH_CHECK_VALUE(rows.dim() == 2 && values.sizes() == rows.sizes(),
              "rows and values must both have shape (n, s)");
  TORCH_CHECK_TYPE(rows.scalar_type() == at::kLong, "rows must be int64, got ", rows.scalar_type());
  TORCH_CHECK_TYPE(values.scalar_type() == x.scalar_type(), "values dtype ", values.scalar_type(),
              " must match the input dtype ", x.scalar_type());
  TORCH_CHECK_VALUE(rows.size(0) == x.size(1), "input has ", x.size(1),
              " features on its last dimension, sketch expects ", rows.size(0));
  TORCH_CHECK_VALUE(m >= 1, "sketch size m must be >= 1, got ", m);
  if (rows.numel() > 0) {
    // An out-of-range index would write outside the output buffer, so it is checked up front.
    const auto lo = rows.min().item<int64_t>();
    const auto hi = rows.max().item<int64_t>();
    TORCH_CHECK_VALUE(lo >= 0 && hi < m, "sketch row indices must lie in [0, ", m, "), got [", lo, ", ",
                hi, "]");
  }
}

at::Tensor sparse_apply_cpu(const at::Tensor& x_in, const at::Tensor& rows_in,
                            const at::Tensor& values_in, int64_t m) {
  check_sparse(x_in, rows_in, values_in, m);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor rows = rows_in.contiguous();
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
  const at::Tensor grad = grad_in.contiguous();
  check_sparse(x_in, rows_in, values_in, grad.size(1));
  TORCH_CHECK_VALUE(grad.dim() == 2 && grad.size(0) == x_in.size(0), "grad must have shape (B, m)");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor rows = rows_in.contiguous();
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
