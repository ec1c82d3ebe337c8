// Fused bilateral slice-and-apply on the CPU: forward and backward (lesson 02).
//
// HDRNet semantics (google/hdrnet bilateral_slice_apply), written from the formulas:
//   grid  (B, 12, D, Hg, Wg), channel c = 4 i + j: coefficient of output i for input j (j = 3: bias)
//   guide (B, H, W) in [0, 1],  image (B, 3, H, W)  ->  out (B, 3, H, W)
//   gx = (x + 1/2) Wg / W,  gy = (y + 1/2) Hg / H,  gz = guide D
//   corners k0 = floor(g - 1/2), k1 = k0 + 1; tent weights max(1 - |k + 1/2 - g|, 0) = (1 - t, t)
//   with t = g - 1/2 - k0; indices clamped to [0, G - 1] (border replicate)
//   out_i = sum_j A_ij in_j + A_i3,   A_c = sum_8 wx wy wz grid[c]
//
// Speed ideas:
// 1. The y-interpolation is the same for a whole row of pixels, so each row first builds a
//    "slab" S[z][xg][p] = wy0 grid[c, z, y0, xg] + wy1 grid[c, z, y1, xg] (a few KB, stays in
//    L1). Per pixel only 2 x-corners x 2 z-corners remain.
// 2. In the forward pass a slab cell stores its 12 coefficients *transposed and padded* to 16 floats,
//    p = 4 j + i (input j, output i, i = 3 is a zero pad): the four corner blends are 16-wide
//    (one AVX-512 or two AVX2 registers), and the apply is three 4-wide FMAs,
//    out(4) = A[:, 0] r + A[:, 1] g + A[:, 2] b + A[:, 3], with no horizontal sums.
// 3. The z corners of a whole row are computed first, in a loop the compiler vectorises.
// The full-resolution (B, 12, H, W) coefficient tensor never exists.
//
// Backward: d image and d guide are per pixel; d grid is a splat. Its slab keeps the grid's
// channel order, p = c (12 of 16 lanes): the transposed layout measured slower here, because
// the splat weights dout_i in_j would have to be shuffled into it for every pixel. Each row splats into its
// own slab dS, which is then spread to grid rows y0, y1; rows run in parallel chunks, each
// chunk with a private grid-sized buffer, summed in a fixed order (deterministic).
#include <torch/extension.h>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kC = 12;    // coefficients per cell: 3 outputs x (3 inputs + bias)
constexpr int64_t kChunk = 256;  // pixels per chunk of a row in the forward pass
constexpr int64_t kPad = 16;  // floats per slab cell: 4 inputs x 4 outputs (one 64-byte line)

// slab position of grid channel c = 4 i + j (output i, input j): p = 4 j + i
constexpr int64_t slab_pos(int64_t c) { return 4 * (c % 4) + c / 4; }

// Two interpolation corners of a continuous cell coordinate g along an axis of `size` cells.
template <typename acc_t>
struct Corners {
  int64_t i0, i1;  // clamped indices
  acc_t w0, w1;    // tent weights (from the unclamped index)
};

template <typename acc_t>
inline Corners<acc_t> corners(acc_t g, int64_t size) {
  // k0 = floor(g - 1/2),  t = g - 1/2 - k0  in [0, 1)
  const acc_t f = g - acc_t(0.5);
  const acc_t k = std::floor(f);
  const acc_t t = f - k;
  const int64_t k0 = static_cast<int64_t>(k);
  // w(k0) = 1 - |k0 + 1/2 - g| = 1 - t,   w(k0 + 1) = 1 - |k0 + 3/2 - g| = t
  return {std::min(std::max(k0, int64_t(0)), size - 1),
          std::min(std::max(k0 + 1, int64_t(0)), size - 1), acc_t(1) - t, t};
}

// S[z][xg][c] = wy0 grid[c, z, y0, xg] + wy1 grid[c, z, y1, xg]   (one image row)
// transposed = true: cell layout p = slab_pos(c) (forward); false: p = c (backward)
template <typename scalar_t, typename acc_t, bool transposed>
inline void build_slab(const scalar_t* g, int64_t D, int64_t Hg, int64_t Wg, const Corners<acc_t>& cy,
                       acc_t* S) {
  const int64_t plane = Hg * Wg;
  for (int64_t c = 0; c < kC; ++c) {
    for (int64_t z = 0; z < D; ++z) {
      const scalar_t* r0 = g + (c * D + z) * plane + cy.i0 * Wg;
      const scalar_t* r1 = g + (c * D + z) * plane + cy.i1 * Wg;
      for (int64_t xg = 0; xg < Wg; ++xg) {
        S[(z * Wg + xg) * kPad + (transposed ? slab_pos(c) : c)] = cy.w0 * acc_t(r0[xg]) + cy.w1 * acc_t(r1[xg]);
      }
    }
  }
}

// x-corners of every column, shared by all rows: (B, H, W) -> W entries
template <typename acc_t>
std::vector<Corners<acc_t>> column_corners(int64_t W, int64_t Wg) {
  std::vector<Corners<acc_t>> cols(W);
  for (int64_t x = 0; x < W; ++x) {
    // gx = (x + 1/2) Wg / W
    cols[x] = corners<acc_t>((acc_t(x) + acc_t(0.5)) * acc_t(Wg) / acc_t(W), Wg);
  }
  return cols;
}

void check_inputs(const at::Tensor& grid, const at::Tensor& guide, const at::Tensor& image) {
  TORCH_CHECK(grid.dim() == 5 && grid.size(1) == kC, "grid must be (B, 12, D, Hg, Wg), got ", grid.sizes());
  TORCH_CHECK(image.dim() == 4 && image.size(1) == 3, "image must be (B, 3, H, W), got ", image.sizes());
  TORCH_CHECK(guide.dim() == 3, "guide must be (B, H, W), got ", guide.sizes());
  TORCH_CHECK(grid.size(0) == image.size(0) && guide.size(0) == image.size(0), "batch sizes differ");
  TORCH_CHECK(guide.size(1) == image.size(2) && guide.size(2) == image.size(3), "guide and image sizes differ");
  TORCH_CHECK(grid.scalar_type() == image.scalar_type() && guide.scalar_type() == image.scalar_type(),
              "grid, guide and image must share one dtype");
  TORCH_CHECK(!grid.is_cuda() && !guide.is_cuda() && !image.is_cuda(), "CPU tensors expected");
}

// Forward for one dtype: out (B, 3, H, W) = slice(grid, guide) applied to image
template <typename scalar_t>
void forward_kernel(const scalar_t* gp, const scalar_t* gd, const scalar_t* im, scalar_t* op, int64_t B,
                    int64_t H, int64_t W, int64_t D, int64_t Hg, int64_t Wg) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t HW = H * W;
  const auto cols = column_corners<acc_t>(W, Wg);
  const acc_t dz = acc_t(D);
  // one task = one image row (over all batches): rows are independent in the forward pass.
  // Small images stay on one thread (waking a pool costs more than ~32K pixels of work).
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(W, 1));
  // per column: slab offsets of the two x-corners and the weight of the second
  std::vector<int32_t> xo0(W), xo1(W);
  std::vector<acc_t> xt(W);
  for (int64_t x = 0; x < W; ++x) {
    xo0[x] = int32_t(cols[x].i0 * kPad);
    xo1[x] = int32_t(cols[x].i1 * kPad);
    xt[x] = cols[x].w1;
  }
  at::parallel_for(0, B * H, grain, [&](int64_t begin, int64_t end) {
    // padding lanes (i = 3) stay zero: build_slab only writes p = 4 j + i with i < 3
    std::vector<acc_t> slab(D * Wg * kPad, acc_t(0));
    std::vector<int32_t> zo0(kChunk), zo1(kChunk);
    std::vector<acc_t> zt(kChunk);
    acc_t* S = slab.data();
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H, y = row % H;
      // gy = (y + 1/2) Hg / H
      const auto cy = corners<acc_t>((acc_t(y) + acc_t(0.5)) * acc_t(Hg) / acc_t(H), Hg);
      build_slab<scalar_t, acc_t, true>(gp + b * kC * D * Hg * Wg, D, Hg, Wg, cy, S);
      const scalar_t* g_row = gd + b * HW + y * W;
      const scalar_t* r_row = im + b * 3 * HW + y * W;
      scalar_t* o_row = op + b * 3 * HW + y * W;
      const int32_t zmax = int32_t(D - 1), zstride = int32_t(Wg * kPad);
      // the row in chunks of kChunk pixels, so the per-pixel corner arrays stay in L1 next to the slab
      for (int64_t x0c = 0; x0c < W; x0c += kChunk) {
        const int64_t n = std::min<int64_t>(kChunk, W - x0c);
        // z corners of the chunk: gz = guide D, k0 = floor(gz - 1/2), t = gz - 1/2 - k0
#pragma omp simd
        for (int64_t k = 0; k < n; ++k) {
          const acc_t f = acc_t(g_row[x0c + k]) * dz - acc_t(0.5);
          const acc_t fl = std::floor(f);
          const int32_t k0 = int32_t(fl);
          zt[k] = f - fl;
          zo0[k] = std::min(std::max(k0, int32_t(0)), zmax) * zstride;
          zo1[k] = std::min(std::max(k0 + 1, int32_t(0)), zmax) * zstride;
        }
        for (int64_t k = 0; k < n; ++k) {
          const int64_t x = x0c + k;
          const acc_t* s00 = S + zo0[k] + xo0[x];  // (z0, x0)
          const acc_t* s01 = S + zo0[k] + xo1[x];  // (z0, x1)
          const acc_t* s10 = S + zo1[k] + xo0[x];  // (z1, x0)
          const acc_t* s11 = S + zo1[k] + xo1[x];  // (z1, x1)
          const acc_t u = zt[k], t = xt[x];
          const acc_t w00 = (1 - u) * (1 - t), w01 = (1 - u) * t, w10 = u * (1 - t), w11 = u * t;
          // A_p = sum over the 4 remaining corners of w S[p]   (16 lanes)
          alignas(64) acc_t a[kPad];
#pragma omp simd aligned(a : 64)
          for (int64_t p = 0; p < kPad; ++p) a[p] = w00 * s00[p] + w01 * s01[p] + w10 * s10[p] + w11 * s11[p];
          const acc_t r = acc_t(r_row[x]), g = acc_t(r_row[HW + x]), bl = acc_t(r_row[2 * HW + x]);
          // out_i = A_i0 r + A_i1 g + A_i2 b + A_i3   (4 lanes, the last one unused)
          alignas(16) acc_t o[4];
#pragma omp simd aligned(o : 16)
          for (int64_t i = 0; i < 4; ++i) o[i] = a[i] * r + a[4 + i] * g + a[8 + i] * bl + a[12 + i];
          o_row[x] = scalar_t(o[0]);
          o_row[HW + x] = scalar_t(o[1]);
          o_row[2 * HW + x] = scalar_t(o[2]);
        }
      }
    }
  });
}

// Backward for one dtype: d grid (accumulated in acc_t), d guide, d image in one pass over the pixels
template <typename scalar_t>
void backward_kernel(const scalar_t* gp, const scalar_t* gd, const scalar_t* im, const scalar_t* dop,
                     at::opmath_type<scalar_t>* dgrid, scalar_t* dgd, scalar_t* dim, int64_t B, int64_t H,
                     int64_t W, int64_t D, int64_t Hg, int64_t Wg) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t HW = H * W, cells = kC * D * Hg * Wg;
  const auto cols = column_corners<acc_t>(W, Wg);
  const acc_t dz = acc_t(D);
  // rows of one batch element are cut into chunks; each chunk splats into a private grid
  const int64_t n_chunks = std::max<int64_t>(
      1, std::min<int64_t>(at::get_num_threads(), H * W / (int64_t(1) << 15)));
  std::vector<acc_t> partial(n_chunks * cells);
  for (int64_t b = 0; b < B; ++b) {
    std::fill(partial.begin(), partial.end(), acc_t(0));
    at::parallel_for(0, n_chunks, 1, [&](int64_t cbegin, int64_t cend) {
      std::vector<acc_t> slab(D * Wg * kPad, acc_t(0)), dslab(D * Wg * kPad, acc_t(0));
      acc_t* S = slab.data();
      acc_t* dS = dslab.data();
      for (int64_t chunk = cbegin; chunk < cend; ++chunk) {
        acc_t* dG = partial.data() + chunk * cells;  // (12, D, Hg, Wg) of this chunk
        const int64_t y_begin = H * chunk / n_chunks, y_end = H * (chunk + 1) / n_chunks;
        for (int64_t y = y_begin; y < y_end; ++y) {
          const auto cy = corners<acc_t>((acc_t(y) + acc_t(0.5)) * acc_t(Hg) / acc_t(H), Hg);
          build_slab<scalar_t, acc_t, false>(gp + b * cells, D, Hg, Wg, cy, S);
          std::fill(dslab.begin(), dslab.end(), acc_t(0));
          const int64_t off = b * HW + y * W;
          const scalar_t* r_row = im + b * 3 * HW + y * W;
          const scalar_t* d_row = dop + b * 3 * HW + y * W;
          scalar_t* di_row = dim + b * 3 * HW + y * W;
          for (int64_t x = 0; x < W; ++x) {
            const auto& cx = cols[x];
            const auto cz = corners<acc_t>(acc_t(gd[off + x]) * dz, D);
            const int64_t o00 = (cz.i0 * Wg + cx.i0) * kPad, o01 = (cz.i0 * Wg + cx.i1) * kPad;
            const int64_t o10 = (cz.i1 * Wg + cx.i0) * kPad, o11 = (cz.i1 * Wg + cx.i1) * kPad;
            const acc_t w00 = cz.w0 * cx.w0, w01 = cz.w0 * cx.w1, w10 = cz.w1 * cx.w0, w11 = cz.w1 * cx.w1;
            const acc_t in[4] = {acc_t(r_row[x]), acc_t(r_row[HW + x]), acc_t(r_row[2 * HW + x]), acc_t(1)};
            const acc_t dout[3] = {acc_t(d_row[x]), acc_t(d_row[HW + x]), acc_t(d_row[2 * HW + x])};
            acc_t a[kC], da[kC], gv[kC];
#pragma omp simd
            for (int64_t c = 0; c < kC; ++c) {
              // A_c, and dA_c/dgz = wx0 (S[z1,x0] - S[z0,x0]) + wx1 (S[z1,x1] - S[z0,x1])
              a[c] = w00 * S[o00 + c] + w01 * S[o01 + c] + w10 * S[o10 + c] + w11 * S[o11 + c];
              da[c] = cx.w0 * (S[o10 + c] - S[o00 + c]) + cx.w1 * (S[o11 + c] - S[o01 + c]);
              // dL/dA_c = dout_i in_j   (c = 4 i + j)
              gv[c] = dout[c / 4] * in[c % 4];
            }
            // d in_j = sum_i A_ij dout_i
            for (int64_t j = 0; j < 3; ++j) {
              di_row[j * HW + x] = scalar_t(a[j] * dout[0] + a[4 + j] * dout[1] + a[8 + j] * dout[2]);
            }
            // d guide = D sum_c dA_c/dgz dL/dA_c
            acc_t dg = 0;
#pragma omp simd reduction(+ : dg)
            for (int64_t c = 0; c < kC; ++c) dg += da[c] * gv[c];
            dgd[off + x] = scalar_t(dz * dg);
            // splat dL/dA into the row slab at the 4 corners
#pragma omp simd
            for (int64_t c = 0; c < kC; ++c) {
              dS[o00 + c] += w00 * gv[c];
              dS[o01 + c] += w01 * gv[c];
              dS[o10 + c] += w10 * gv[c];
              dS[o11 + c] += w11 * gv[c];
            }
          }
          // spread the row slab to grid rows y0, y1 with weights wy0, wy1
          for (int64_t c = 0; c < kC; ++c) {
            for (int64_t z = 0; z < D; ++z) {
              acc_t* g0 = dG + ((c * D + z) * Hg + cy.i0) * Wg;
              acc_t* g1 = dG + ((c * D + z) * Hg + cy.i1) * Wg;
              for (int64_t xg = 0; xg < Wg; ++xg) {
                const acc_t v = dS[(z * Wg + xg) * kPad + c];
                g0[xg] += cy.w0 * v;
                g1[xg] += cy.w1 * v;
              }
            }
          }
        }
      }
    });
    // sum the chunks in a fixed order (deterministic)
    acc_t* dst = dgrid + b * cells;
    for (int64_t chunk = 0; chunk < n_chunks; ++chunk) {
      const acc_t* src = partial.data() + chunk * cells;
      for (int64_t i = 0; i < cells; ++i) dst[i] += src[i];
    }
  }
}

// HDRNet's learned guide (lesson 01's CurveGuide), fused, forward only (inference):
//   x' = M x + b,   f_c(x') = sum_k slopes[c, k] relu(x'_c - shifts[c, k]),
//   guide = clip(sum_c mix_c f_c(x') + mix_bias, 0, 1)
// One pass over the pixels, vectorised across x; no (B, 3, K, H, W) intermediate.
template <typename scalar_t, int64_t kK>
void curve_guide_kernel(const scalar_t* im, const float* M, const float* mb, const float* shifts,
                        const float* slopes, const float* mix, float mix_bias, scalar_t* out, int64_t B, int64_t H,
                        int64_t W, int64_t K_runtime) {
  // kK > 0: the knot count is a compile-time constant (the inner loop unrolls, x vectorises)
  const int64_t K = kK > 0 ? kK : K_runtime;
  const int64_t HW = H * W;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(W, 1));
  at::parallel_for(0, B * H, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H, y = row % H;
      const scalar_t* r_row = im + b * 3 * HW + y * W;
      scalar_t* o_row = out + b * HW + y * W;
#pragma omp simd
      for (int64_t x = 0; x < W; ++x) {
        const float r = float(r_row[x]), g = float(r_row[HW + x]), bl = float(r_row[2 * HW + x]);
        float acc = mix_bias;
#pragma GCC unroll 3
        for (int64_t c = 0; c < 3; ++c) {
          // x'_c = M_c0 r + M_c1 g + M_c2 b + b_c
          const float xc = M[3 * c] * r + M[3 * c + 1] * g + M[3 * c + 2] * bl + mb[c];
          float f = 0.f;
#pragma GCC unroll 16
          for (int64_t k = 0; k < K; ++k) f += slopes[c * K + k] * std::max(xc - shifts[c * K + k], 0.f);
          acc += mix[c] * f;
        }
        o_row[x] = scalar_t(std::min(std::max(acc, 0.f), 1.f));
      }
    }
  });
}

}  // namespace

// guide (B, H, W) = CurveGuide(image), parameters as float32 CPU tensors
at::Tensor curve_guide_forward(at::Tensor image, at::Tensor ccm, at::Tensor ccm_bias, at::Tensor shifts,
                               at::Tensor slopes, at::Tensor mix, double mix_bias) {
  TORCH_CHECK(image.dim() == 4 && image.size(1) == 3, "image must be (B, 3, H, W), got ", image.sizes());
  TORCH_CHECK(!image.is_cuda(), "CPU tensors expected");
  TORCH_CHECK(shifts.dim() == 2 && shifts.size(0) == 3 && slopes.sizes() == shifts.sizes(),
              "shifts and slopes must be (3, K)");
  image = image.contiguous();
  auto f32 = [](const at::Tensor& t) { return t.detach().to(at::kFloat).contiguous(); };
  at::Tensor M = f32(ccm), mb = f32(ccm_bias), sh = f32(shifts), sl = f32(slopes), mx = f32(mix);
  TORCH_CHECK(M.numel() == 9 && mb.numel() == 3 && mx.numel() == 3, "ccm (3, 3), ccm_bias (3), mix (3) expected");
  at::Tensor out = at::empty({image.size(0), image.size(2), image.size(3)}, image.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, image.scalar_type(), "curve_guide_forward", [&] {
    auto run = [&](auto kernel) {
      kernel(image.data_ptr<scalar_t>(), M.data_ptr<float>(), mb.data_ptr<float>(), sh.data_ptr<float>(),
             sl.data_ptr<float>(), mx.data_ptr<float>(), float(mix_bias), out.data_ptr<scalar_t>(), image.size(0),
             image.size(2), image.size(3), sh.size(1));
    };
    if (sh.size(1) == 16) {
      run(curve_guide_kernel<scalar_t, 16>);
    } else {
      run(curve_guide_kernel<scalar_t, 0>);
    }
  });
  return out;
}

// out (B, 3, H, W) = slice(grid, guide) applied to image
at::Tensor slice_apply_forward(at::Tensor grid, at::Tensor guide, at::Tensor image) {
  check_inputs(grid, guide, image);
  grid = grid.contiguous();
  guide = guide.contiguous();
  image = image.contiguous();
  at::Tensor out = at::empty_like(image);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, image.scalar_type(), "slice_apply_forward", [&] {
    forward_kernel<scalar_t>(grid.data_ptr<scalar_t>(), guide.data_ptr<scalar_t>(), image.data_ptr<scalar_t>(),
                             out.data_ptr<scalar_t>(), image.size(0), image.size(2), image.size(3), grid.size(2),
                             grid.size(3), grid.size(4));
  });
  return out;
}

// (d grid, d guide, d image) from d out
std::vector<at::Tensor> slice_apply_backward(at::Tensor grid, at::Tensor guide, at::Tensor image,
                                             at::Tensor grad_out) {
  check_inputs(grid, guide, image);
  TORCH_CHECK(grad_out.sizes() == image.sizes(), "grad_out must have the image's shape");
  grid = grid.contiguous();
  guide = guide.contiguous();
  image = image.contiguous();
  grad_out = grad_out.to(image.scalar_type()).contiguous();
  at::Tensor d_guide = at::empty_like(guide);
  at::Tensor d_image = at::empty_like(image);
  const at::ScalarType acc_type = at::toOpMathType(image.scalar_type());
  at::Tensor d_grid = at::zeros(grid.sizes(), grid.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, image.scalar_type(), "slice_apply_backward", [&] {
    backward_kernel<scalar_t>(grid.data_ptr<scalar_t>(), guide.data_ptr<scalar_t>(), image.data_ptr<scalar_t>(),
                              grad_out.data_ptr<scalar_t>(), d_grid.data_ptr<at::opmath_type<scalar_t>>(),
                              d_guide.data_ptr<scalar_t>(), d_image.data_ptr<scalar_t>(), image.size(0),
                              image.size(2), image.size(3), grid.size(2), grid.size(3), grid.size(4));
  });
  return {d_grid.to(grid.scalar_type()), d_guide, d_image};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused bilateral slice-and-apply (HDRNet semantics) on the CPU, forward and backward";
  m.def("forward", &slice_apply_forward, "out = slice_apply(grid, guide, image)");
  m.def("curve_guide", &curve_guide_forward, "guide = CurveGuide(image), inference only");
  m.def("backward", &slice_apply_backward, "(d_grid, d_guide, d_image) = backward(grid, guide, image, d_out)");
}
