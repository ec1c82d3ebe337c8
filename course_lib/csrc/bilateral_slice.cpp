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
// Speed ideas (forward, one pointwise pass: pointwise_kernel):
// 1. The y-interpolation is the same for a whole row of pixels, so each row first builds a
//    "slab" S[z][xg] = wy0 grid[c, z, y0, xg] + wy1 grid[c, z, y1, xg] (a few KB, stays in
//    L1). Per pixel only 2 x-corners x 2 z-corners remain.
// 2. Between neighbouring cells the coefficients are bilinear in the x weight t and the z weight u:
//    A = (P + t Qx) + u (Qz + t Qxz), 3 FMAs per coefficient (the plain 8-corner formula costs
//    8 x (2 + 24) FLOPs per pixel, this about 110 with the apply).
// 3. Portable path: a slab cell holds its 12 coefficients *transposed and padded* to 16 floats,
//    p = 4 j + i (input j, output i, i = 3 a zero pad), so the blend is 16-wide and the apply is
//    three 4-wide FMAs, out(4) = A[:, 0] r + A[:, 1] g + A[:, 2] b + A[:, 3].
// 4. Vector paths (AVX-512: 16 pixels of a row at a time, AVX2: 8). The slab keeps z innermost and each row
//    becomes a table of x patches (P, Qx, Qz, Qxz over z: one register per coefficient), so a permute looks up
//    all pixels' z corners at once; the curve guide is one line per segment of the sorted knots (the segment
//    found by a search in registers, not 16 relus); 8-bit pixels are converted and stored in registers.
// 5. The guide (optionally the learned curve guide, computed from the pixel), the clamp and the
//    rounding to 8 bits happen in the same pass: a photo is read once and its result written once.
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
#include <ATen/Version.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

// the 16-pixel path: AVX-512 with byte and word operations (BW: shuffles, packs and masked byte loads of 8-bit
// pixels)
#if defined(__AVX512F__) && defined(__AVX512BW__)
#define COURSE_SIMD16 1
#endif

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <type_traits>
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

// ---------------------------------------------------------------------------------------------
// The forward pass: one pointwise pass over the pixels
// ---------------------------------------------------------------------------------------------
//
// Per image row, the y-interpolated slab S[z][xg] (16 lanes, p = 4 j + i) is turned into a table of
// *patches*: one per pair of neighbouring z cells (zs in [0, D]: cells clamp(zs - 1), clamp(zs)) and
// pair of neighbouring x cells (xs in [0, Wg]). On a patch the sliced coefficients are bilinear in
// the x weight t and the z weight u:
//   A(t, u) = (1-u)(1-t) S00 + (1-u) t S01 + u (1-t) S10 + u t S11
//           = P + t Qx + u (Qz + t Qxz)
//   P = S00,  Qx = S01 - S00,  Qz = S10 - S00,  Qxz = S11 - S10 - S01 + S00
// so a pixel costs 3 FMAs per lane (48 for the 16 lanes) instead of 4 weights and 4 multiply-adds
// per lane (the 8 corners of the plain formula: 8 x (2 + 24) FLOPs). The table has
// (D + 1)(Wg + 1) patches of 4 x 16 floats (39 KB for 8 x 16 x 16); a pixel reads one patch, and
// along a row the x patch changes only every W / Wg pixels.
//
// Per chunk of kChunk pixels of a row: (1) read the colours, as floats (8-bit values through a
// 256-entry table v / 255); (2) the guide: read it, or compute the learned curve guide from the
// colours; (3) the z patch and weight; (4) slice + apply per pixel; (5) write, as floats or as
// 8-bit values (clamp to [0, 1], v * 255 + 1/2 truncated). Images are read through strides, so
// (B, 3, H, W) planes and (B, H, W, 3) interleaved photos (as decoded) both work without a copy.
// The vector paths take float planes and 8-bit planes or interleaved photos straight from photo to result
// (`row16`, `row8`: colours, guide and results stay in registers or L1 spans); the chunks then do the
// other layouts and the rows' last W mod 16 (8) pixels.

constexpr int64_t kPatch = 4 * kPad;  // floats per patch: P, Qx, Qz, Qxz

// The learned curve guide's parameters (float32):
//   x' = M x + b,  f_c(x') = sum_k slopes[c, k] relu(x'_c - shifts[c, k]),
//   guide = clip(sum_c mix_c f_c(x') + mix_bias, 0, 1)
struct CurveParams {
  float M[9], mb[3], mix[3], mix_bias;
  const float* shifts;  // (3, K)
  const float* slopes;  // (3, K)
  int64_t K;
};

// The curve guide of n pixels given as three arrays of colours (the portable loop, vectorised over
// pixels; kK > 0: the knot count is a compile-time constant): out[k] = guide, in [0, 1]
template <typename in_t, typename out_t, int64_t kK>
inline void curve_guide_span(const in_t* r_in, const in_t* g_in, const in_t* b_in, const float* M, const float* mb,
                             const float* shifts, const float* slopes, const float* mix, float mix_bias, out_t* out,
                             int64_t n, int64_t K_runtime) {
  const int64_t K = kK > 0 ? kK : K_runtime;
#pragma omp simd
  for (int64_t x = 0; x < n; ++x) {
    const float r = float(r_in[x]), g = float(g_in[x]), bl = float(b_in[x]);
    float acc = mix_bias;
#pragma GCC unroll 3
    for (int64_t c = 0; c < 3; ++c) {
      // x'_c = M_c0 r + M_c1 g + M_c2 b + b_c
      const float xc = M[3 * c] * r + M[3 * c + 1] * g + M[3 * c + 2] * bl + mb[c];
      // f_c = sum_k slopes_ck relu(x'_c - shifts_ck)
      float f = 0.f;
#pragma GCC unroll 16
      for (int64_t k = 0; k < K; ++k) f += slopes[c * K + k] * std::max(xc - shifts[c * K + k], 0.f);
      acc += mix[c] * f;
    }
    // guide = clip(sum_c mix_c f_c + mix_bias, 0, 1)
    out[x] = out_t(std::min(std::max(acc, 0.f), 1.f));
  }
}

// Strided view of a (B, 3, H, W) image: element (b, c, y, x) at b sb + c sc + y sh + x sw
struct Strides {
  int64_t sb, sc, sh, sw;
};

inline Strides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// patches of one row from its slab: T[(zs (Wg + 1) + xs) kPatch + q kPad + p]
template <typename acc_t>
inline void build_patches(const acc_t* S, int64_t D, int64_t Wg, acc_t* T) {
  for (int64_t zs = 0; zs <= D; ++zs) {
    const int64_t z0 = std::max<int64_t>(zs - 1, 0), z1 = std::min<int64_t>(zs, D - 1);
    for (int64_t xs = 0; xs <= Wg; ++xs) {
      const int64_t x0 = std::max<int64_t>(xs - 1, 0), x1 = std::min<int64_t>(xs, Wg - 1);
      const acc_t* s00 = S + (z0 * Wg + x0) * kPad;
      const acc_t* s01 = S + (z0 * Wg + x1) * kPad;
      const acc_t* s10 = S + (z1 * Wg + x0) * kPad;
      const acc_t* s11 = S + (z1 * Wg + x1) * kPad;
      acc_t* t = T + (zs * (Wg + 1) + xs) * kPatch;
#pragma omp simd
      for (int64_t p = 0; p < kPad; ++p) {
        t[p] = s00[p];                                    // P
        t[kPad + p] = s01[p] - s00[p];                    // Qx
        t[2 * kPad + p] = s10[p] - s00[p];                // Qz
        t[3 * kPad + p] = s11[p] - s10[p] - s01[p] + s00[p];  // Qxz
      }
    }
  }
}

// patch index and weight of a cell coordinate g on an axis of `size` cells:
//   k0 = floor(g - 1/2), weight of the upper cell t = g - 1/2 - k0, patch k0 + 1 in [0, size]
template <typename acc_t>
inline void patch_of(acc_t g, int64_t size, int32_t& patch, acc_t& t) {
  acc_t f = g - acc_t(0.5);
  // outside the grid the patch's two cells are one clamped cell, so t no longer matters;
  // clamping f first keeps the int conversion defined (NaN -> -1)
  f = f > acc_t(-1) ? f : acc_t(-1);
  f = f < acc_t(size) ? f : acc_t(size);
  const acc_t fl = std::floor(f);
  t = f - fl;
  patch = int32_t(fl) + 1;
  patch = patch < int32_t(size) ? patch : int32_t(size);
}

// an image value as acc_t: 8-bit values through the table v / 255, others converted
template <typename acc_t, typename T>
inline acc_t to_acc(T v, const float* lut) {
  if constexpr (std::is_same_v<T, uint8_t>) {
    return acc_t(lut[v]);
  } else {
    (void)lut;
    return acc_t(v);
  }
}

// The grid with z innermost, padded to `lanes` (16: AVX-512, 8: AVX2): Gz[b][c][y][xg][z] (once per call)
inline std::vector<float> grid_z_innermost(const float* gp, int64_t B, int64_t D, int64_t Hg, int64_t Wg,
                                           int64_t lanes) {
  std::vector<float> Gz(B * kC * Hg * Wg * lanes, 0.f);
  for (int64_t bc = 0; bc < B * kC; ++bc)
    for (int64_t z = 0; z < D; ++z)
      for (int64_t yx = 0; yx < Hg * Wg; ++yx) Gz[(bc * Hg * Wg + yx) * lanes + z] = gp[(bc * D + z) * Hg * Wg + yx];
  return Gz;
}

#if defined(COURSE_SIMD16)
// ---- AVX-512: 16 pixels at a time (compiled with -march=native on a CPU that has it; the loops
// above remain the portable path). As in the 8-pixel path below, the slab keeps z in the lanes and
// each row's slab becomes a table of x patches (xs in [0, Wg]), per coefficient 4 registers over z:
//   P(z) = S[x0](z),  Qx(z) = S[x1](z) - S[x0](z),  Qz(z) = S[x0](z+1) - S[x0](z),  Qxz = Qz[x1] - Qz[x0]
// so `permutexvar` looks up 16 pixels' values at once, and a pixel with z corners k, k + 1 and weights t, u is
//   A = (P + t Qx) + u (Qz + t Qxz)      (4 lookups and 3 FMAs per coefficient, 12 FMAs for the affine)
// (the corner-slab form, 4 lookups + 3 subtractions + 3 FMAs per coefficient, through chunk buffers, measured
// 8.5 ms for the 1080p pass with a given guide on one Zen 4 thread, this 5.9 ms). Rows go straight from photo
// to result (`row16`).
constexpr bool kSimd = true;

// One row's patch table T16[xs][c][q][z] (q: P, Qx, Qz, Qxz) from the grid rows y0, y1 (S: scratch):
//   S[c][xg](z) = wy0 Gz[c][y0][xg](z) + wy1 Gz[c][y1][xg](z)
inline void build_table16(const float* Gz, int64_t D, int64_t Hg, int64_t Wg, const Corners<float>& cy, float* S,
                          float* T) {
  const __m512 w0 = _mm512_set1_ps(cy.w0), w1 = _mm512_set1_ps(cy.w1);
  for (int64_t c = 0; c < kC; ++c) {
    const float* r0 = Gz + ((c * Hg + cy.i0) * Wg) * 16;
    const float* r1 = Gz + ((c * Hg + cy.i1) * Wg) * 16;
    for (int64_t xg = 0; xg < Wg; ++xg) {
      _mm512_storeu_ps(S + (xg * kC + c) * 16,
                       _mm512_fmadd_ps(w0, _mm512_loadu_ps(r0 + xg * 16), _mm512_mul_ps(w1, _mm512_loadu_ps(r1 + xg * 16))));
    }
  }
  // lane z of `up` holds lane min(z + 1, D - 1)
  alignas(64) int32_t up_idx[16];
  for (int z = 0; z < 16; ++z) up_idx[z] = int32_t(std::min<int64_t>(z + 1, D - 1));
  const __m512i up = _mm512_load_si512(up_idx);
  for (int64_t xs = 0; xs <= Wg; ++xs) {
    const int64_t x0 = std::max<int64_t>(xs - 1, 0), x1 = std::min<int64_t>(xs, Wg - 1);
    for (int64_t c = 0; c < kC; ++c) {
      const __m512 a = _mm512_loadu_ps(S + (x0 * kC + c) * 16), b = _mm512_loadu_ps(S + (x1 * kC + c) * 16);
      const __m512 da = _mm512_sub_ps(_mm512_permutexvar_ps(up, a), a);
      const __m512 db = _mm512_sub_ps(_mm512_permutexvar_ps(up, b), b);
      float* t = T + ((xs * kC + c) * 4) * 16;
      _mm512_storeu_ps(t, a);
      _mm512_storeu_ps(t + 16, _mm512_sub_ps(b, a));
      _mm512_storeu_ps(t + 32, da);
      _mm512_storeu_ps(t + 48, _mm512_sub_ps(db, da));
    }
  }
}

// RN(v / 255) for integers v in [0, 255] without a division: q = RN(v r), r = RN(1/255), the residual
// e = v - 255 q exact by fma, RN(q + e r) = RN(v / 255) (all 256 values: test_fastslice)
inline __m512 div255_16(__m512 v) {
  const __m512 r = _mm512_set1_ps(1.0f / 255.0f);
  const __m512 q = _mm512_mul_ps(v, r);
  return _mm512_fmadd_ps(_mm512_fnmadd_ps(q, _mm512_set1_ps(255.f), v), r, q);
}

// The curve guide with sorted knots: with i the number of shifts below x', f(x') = S_i x' - O_i,
// S_i = sum_{k<i} slope_k, O_i = sum_{k<i} slope_k shift_k; i by a 4-step binary search in a register.
struct CurveSimd {
  __m512 shifts[3];          // sorted, 16 knots
  __m512 S_lo[3], S_hi[3];   // S_0 .. S_15, S_16 ..
  __m512 O_lo[3], O_hi[3];
  float M[9], mb[3], mix[3], mix_bias;
};

inline CurveSimd make_curve_simd(const CurveParams& cp) {
  CurveSimd cs;
  for (int c = 0; c < 3; ++c) {
    int order[16];
    for (int k = 0; k < 16; ++k) order[k] = k;
    const float* sh = cp.shifts + c * 16;
    const float* sl = cp.slopes + c * 16;
    std::stable_sort(order, order + 16, [&](int a, int b) { return sh[a] < sh[b]; });
    alignas(64) float s[16], S[32] = {0}, O[32] = {0};
    for (int k = 0; k < 16; ++k) {
      s[k] = sh[order[k]];
      S[k + 1] = S[k] + sl[order[k]];
      O[k + 1] = O[k] + sl[order[k]] * sh[order[k]];
    }
    cs.shifts[c] = _mm512_load_ps(s);
    cs.S_lo[c] = _mm512_load_ps(S), cs.S_hi[c] = _mm512_load_ps(S + 16);
    cs.O_lo[c] = _mm512_load_ps(O), cs.O_hi[c] = _mm512_load_ps(O + 16);
  }
  std::copy(cp.M, cp.M + 9, cs.M);
  std::copy(cp.mb, cp.mb + 3, cs.mb);
  std::copy(cp.mix, cp.mix + 3, cs.mix);
  cs.mix_bias = cp.mix_bias;
  return cs;
}

inline __m512 curve_guide16(const CurveSimd& cs, __m512 r, __m512 g, __m512 b) {
  __m512 acc = _mm512_set1_ps(cs.mix_bias);
  for (int c = 0; c < 3; ++c) {
    // x'_c = M_c0 r + M_c1 g + M_c2 b + b_c
    const __m512 x = _mm512_fmadd_ps(_mm512_set1_ps(cs.M[3 * c]), r,
                                     _mm512_fmadd_ps(_mm512_set1_ps(cs.M[3 * c + 1]), g,
                                                     _mm512_fmadd_ps(_mm512_set1_ps(cs.M[3 * c + 2]), b,
                                                                     _mm512_set1_ps(cs.mb[c]))));
    // i = #{k : shift_k < x'} in [0, 16]
    __m512i i = _mm512_setzero_si512();
    for (int step = 8; step >= 1; step /= 2) {
      const __m512i cand = _mm512_add_epi32(i, _mm512_set1_epi32(step));
      const __m512 s = _mm512_permutexvar_ps(_mm512_sub_epi32(cand, _mm512_set1_epi32(1)), cs.shifts[c]);
      i = _mm512_mask_mov_epi32(i, _mm512_cmp_ps_mask(s, x, _CMP_LT_OQ), cand);
    }
    const __mmask16 last = _mm512_cmp_ps_mask(_mm512_permutexvar_ps(i, cs.shifts[c]), x, _CMP_LT_OQ);
    i = _mm512_mask_add_epi32(i, last, i, _mm512_set1_epi32(1));
    // f = S_i x' - O_i
    const __m512 S = _mm512_permutex2var_ps(cs.S_lo[c], i, cs.S_hi[c]);
    const __m512 O = _mm512_permutex2var_ps(cs.O_lo[c], i, cs.O_hi[c]);
    acc = _mm512_fmadd_ps(_mm512_set1_ps(cs.mix[c]), _mm512_fmsub_ps(S, x, O), acc);
  }
  // clip to [0, 1]
  return _mm512_min_ps(_mm512_max_ps(acc, _mm512_setzero_ps()), _mm512_set1_ps(1.f));
}

// out (16 pixels) for colour i from the patch table Tp of one x patch: lanes zi, weights t, u
inline __m512 apply_row16(const float* Tp, int i, __m512i zi, __m512 t, __m512 u, const __m512* in) {
  __m512 o = _mm512_setzero_ps();
  for (int j = 0; j < 4; ++j) {
    const float* q = Tp + (4 * i + j) * 64;
    const __m512 P = _mm512_permutexvar_ps(zi, _mm512_loadu_ps(q));
    const __m512 Qx = _mm512_permutexvar_ps(zi, _mm512_loadu_ps(q + 16));
    const __m512 Qz = _mm512_permutexvar_ps(zi, _mm512_loadu_ps(q + 32));
    const __m512 Qxz = _mm512_permutexvar_ps(zi, _mm512_loadu_ps(q + 48));
    // A = (P + t Qx) + u (Qz + t Qxz)
    const __m512 A = _mm512_fmadd_ps(u, _mm512_fmadd_ps(t, Qxz, Qz), _mm512_fmadd_ps(t, Qx, P));
    // out_i = sum_j A_ij in_j + A_i3
    o = j < 3 ? _mm512_fmadd_ps(A, in[j], o) : _mm512_add_ps(o, A);
  }
  return o;
}

// slice + apply for 16 pixels (gz = guide D; x patches xs and weights xt of their columns, 16 entries readable)
// from the row's table T; lanes outside `valid` are computed from whatever they hold and not used
inline void slice_apply16v(const float* T, int64_t D, const int32_t* xs, const float* xt, const __m512* in, __m512 gz,
                           __m512* out, __mmask16 valid = 0xFFFF) {
  // f = clamp(gz - 1/2, 0, D - 1) (NaN -> 0),  k = clamp(floor f, 0, D - 2) (D = 1: 0),  u = f - k
  __m512 f = _mm512_sub_ps(gz, _mm512_set1_ps(0.5f));
  f = _mm512_min_ps(_mm512_max_ps(f, _mm512_setzero_ps()), _mm512_set1_ps(float(D - 1)));
  const __m512 k = _mm512_max_ps(_mm512_min_ps(_mm512_roundscale_ps(f, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC),
                                               _mm512_set1_ps(float(D - 2))),
                                 _mm512_setzero_ps());
  const __m512 u = _mm512_sub_ps(f, k);
  const __m512i zi = _mm512_cvttps_epi32(k);
  const __m512 t = _mm512_maskz_loadu_ps(valid, xt);
  const int32_t last = xs[31 - __builtin_clz(uint32_t(valid))];
  if (xs[0] == last) {  // one x patch (nearly always): xs is non-decreasing along the row
    const float* Tp = T + (xs[0] * kC) * 64;
    for (int i = 0; i < 3; ++i) out[i] = apply_row16(Tp, i, zi, t, u, in);
    return;
  }
  // two (or more) x patches: each lane from its own
  const __m512i xsv = _mm512_maskz_loadu_epi32(valid, xs);
  for (int i = 0; i < 3; ++i) out[i] = _mm512_setzero_ps();
  for (int32_t px = xs[0]; px <= last; ++px) {
    const __mmask16 m = _mm512_mask_cmpeq_epi32_mask(valid, xsv, _mm512_set1_epi32(px));
    if (m == 0) continue;
    const float* Tp = T + (px * kC) * 64;
    for (int i = 0; i < 3; ++i) out[i] = _mm512_mask_mov_ps(out[i], m, apply_row16(Tp, i, zi, t, u, in));
  }
}

// the same for n <= 16 pixels from and to arrays
inline void slice_apply16(const float* T, int64_t D, const int32_t* xs, const float* xt, const float* cr,
                          const float* cg, const float* cb, const float* gz, float* o0, float* o1, float* o2,
                          int64_t n) {
  const __mmask16 valid = __mmask16((1u << n) - 1u);
  const __m512 in[3] = {_mm512_maskz_loadu_ps(valid, cr), _mm512_maskz_loadu_ps(valid, cg),
                        _mm512_maskz_loadu_ps(valid, cb)};
  __m512 out[3];
  slice_apply16v(T, D, xs, xt, in, _mm512_maskz_loadu_ps(valid, gz), out, valid);
  _mm512_mask_storeu_ps(o0, valid, out[0]);
  _mm512_mask_storeu_ps(o1, valid, out[1]);
  _mm512_mask_storeu_ps(o2, valid, out[2]);
}

// 16 pixels' colours as floats v / 255: 8-bit planes (sw = 1) or interleaved pixels (sw = 3, sc = 1). Interleaved:
// one masked 48-byte load, one dword permute giving each 128-bit lane 4 pixels (12 bytes), then per colour a
// byte shuffle straight into zero-extended int32 lanes (instead of 3 widening loads and 6 two-source permutes)
inline void load16_u8(const uint8_t* px, int64_t sc, int64_t sw, __m512* in) {
  if (sw == 1) {  // planes
    for (int ch = 0; ch < 3; ++ch) {
      const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(px + ch * sc)));
      in[ch] = div255_16(_mm512_cvtepi32_ps(v));
    }
    return;
  }
  const __m512i v = _mm512_maskz_loadu_epi8(__mmask64((uint64_t(1) << 48) - 1), px);
  const __m512i w = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 1, 2, 2, 3, 4, 5, 5, 6, 7, 8, 8, 9, 10, 11, 11), v);
  for (int ch = 0; ch < 3; ++ch) {
    // int32 lane k of each 128-bit lane: byte 3 k + ch
    const __m512i sel = _mm512_broadcast_i32x4(
        _mm_setr_epi8(ch, -1, -1, -1, 3 + ch, -1, -1, -1, 6 + ch, -1, -1, -1, 9 + ch, -1, -1, -1));
    in[ch] = div255_16(_mm512_cvtepi32_ps(_mm512_shuffle_epi8(w, sel)));
  }
}

// 255 clamp(v, 0, 1) + 1/2 (course_lib.images.to_uint8 before its truncation)
inline __m512 round_byte16(__m512 v) {
  v = _mm512_min_ps(_mm512_max_ps(v, _mm512_setzero_ps()), _mm512_set1_ps(1.f));
  return _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(255.f)), _mm512_set1_ps(0.5f));
}

// values already 255 v + 1/2 in [0.5, 255.5] (round_byte16): truncate and pack to bytes, planes or interleaved.
// Interleaved: packs give each 128-bit lane r0-3 g0-3 b0-3 (of its 4 pixels), a byte shuffle interleaves them,
// a dword permute moves the four 12-byte groups together, one masked 48-byte store
inline void store16_u8(uint8_t* px, int64_t sc, int64_t sw, const __m512* rounded) {
  const __m512i R = _mm512_cvttps_epi32(rounded[0]), G = _mm512_cvttps_epi32(rounded[1]);
  const __m512i Bv = _mm512_cvttps_epi32(rounded[2]);
  if (sw == 1) {
    const __m512i ch[3] = {R, G, Bv};
    for (int c = 0; c < 3; ++c) _mm_storeu_si128(reinterpret_cast<__m128i*>(px + c * sc), _mm512_cvtepi32_epi8(ch[c]));
    return;
  }
  const __m512i bytes = _mm512_packus_epi16(_mm512_packus_epi32(R, G), _mm512_packus_epi32(Bv, Bv));
  const __m512i il = _mm512_shuffle_epi8(
      bytes, _mm512_broadcast_i32x4(_mm_setr_epi8(0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11, -1, -1, -1, -1)));
  const __m512i packed =
      _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, 15, 15, 15, 15), il);
  _mm512_mask_storeu_epi8(px, __mmask64((uint64_t(1) << 48) - 1), packed);
}

// A row straight from the photo to the result, 16 pixels at a time (as `row8` below): float planes, or 8-bit
// planes (sw = 1) or interleaved pixels (sw = 3, sc = 1); the guide read from `grow` (kGuide < 0) or the
// 16-knot curve guide computed. Returns the pixels done, W rounded down to a multiple of 16.
template <typename px_t, int kGuide>
__attribute__((noinline)) int64_t row16(const float* T, int64_t D, const int32_t* xs, const float* xt, const px_t* ip,
                                        Strides is, const float* grow, const CurveSimd* cs, bool clamp_out, px_t* dp,
                                        Strides os, int64_t W) {
  constexpr bool bytes = std::is_same_v<px_t, uint8_t>;
  const int64_t W16 = W & ~int64_t(15);
  const __m512 dz = _mm512_set1_ps(float(D)), zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.f);
  auto load = [&](int64_t x, __m512* in) {
    if constexpr (bytes) {
      load16_u8(ip + x * is.sw, is.sc, is.sw, in);
    } else {
      for (int ch = 0; ch < 3; ++ch) in[ch] = _mm512_loadu_ps(ip + ch * is.sc + x);
    }
  };
  auto store = [&](int64_t x, __m512* out) {
    if constexpr (bytes) {
      for (int i = 0; i < 3; ++i) out[i] = round_byte16(out[i]);
      store16_u8(dp + x * os.sw, os.sc, os.sw, out);
    } else {
      for (int i = 0; i < 3; ++i) {
        if (clamp_out) out[i] = _mm512_min_ps(_mm512_max_ps(out[i], zero), one);
        _mm512_storeu_ps(dp + i * os.sc + x, out[i]);
      }
    }
  };
  if constexpr (kGuide < 0) {
    for (int64_t x = 0; x < W16; x += 16) {
      __m512 in[3], out[3];
      load(x, in);
      slice_apply16v(T, D, xs + x, xt + x, in, _mm512_mul_ps(_mm512_loadu_ps(grow + x), dz), out);
      store(x, out);
    }
  } else {
    // in spans, colours and curve guide into L1 buffers first, then slice + apply (8-bit: into the buffers,
    // then rounded and stored): shorter chains per 16 pixels, more of them overlapped (as in row8; 8-bit with a
    // guide map measured slower in spans here: one loop)
    constexpr int64_t kSpan = 128;
    alignas(64) float buf[4][kSpan];
    for (int64_t x0 = 0; x0 < W16; x0 += kSpan) {
      const int64_t n = std::min<int64_t>(kSpan, W16 - x0);
      for (int64_t k = 0; k < n; k += 16) {
        __m512 in[3];
        load(x0 + k, in);
        for (int ch = 0; ch < 3; ++ch) _mm512_store_ps(buf[ch] + k, in[ch]);
        _mm512_store_ps(buf[3] + k, _mm512_mul_ps(curve_guide16(*cs, in[0], in[1], in[2]), dz));
      }
      for (int64_t k = 0; k < n; k += 16) {
        const __m512 in[3] = {_mm512_load_ps(buf[0] + k), _mm512_load_ps(buf[1] + k), _mm512_load_ps(buf[2] + k)};
        __m512 out[3];
        slice_apply16v(T, D, xs + x0 + k, xt + x0 + k, in, _mm512_load_ps(buf[3] + k), out);
        if constexpr (bytes) {
          for (int ch = 0; ch < 3; ++ch) _mm512_store_ps(buf[ch] + k, out[ch]);
        } else {
          store(x0 + k, out);
        }
      }
      if constexpr (bytes) {
        for (int64_t k = 0; k < n; k += 16) {
          __m512 out[3] = {_mm512_load_ps(buf[0] + k), _mm512_load_ps(buf[1] + k), _mm512_load_ps(buf[2] + k)};
          store(x0 + k, out);
        }
      }
    }
  }
  return W16;
}
#else
constexpr bool kSimd = false;
#endif

#if defined(__AVX2__) && defined(__FMA__)
// ---- AVX2: 8 pixels at a time, for grids of 2 to 8 z cells (compiled with -march=native on a CPU
// that has AVX2 and FMA). As in the 16-pixel path the slab keeps z in the lanes, so one register
// holds a coefficient's z cells and `permutevar8x32` looks up 8 pixels' z corners at once.
// Per row the slab becomes a table of x patches (xs in [0, Wg]), per coefficient 4 registers over z:
//   P(z) = S[x0](z),  Qx(z) = S[x1](z) - S[x0](z),  Qz(z) = S[x0](z+1) - S[x0](z),  Qxz = Qz[x1] - Qz[x0]
// and a pixel with z corners k, k + 1 (k in [0, D - 2]) and weights t (x), u (z) reads lane k of each:
//   A = (P + t Qx) + u (Qz + t Qxz)      (3 FMAs per coefficient, 12 per colour for the affine)
// Outside the z range the clamp f = clamp(gz - 1/2, 0, D - 1), k = min(floor f, D - 2), u = f - k gives
// the border cell's value (u = 0 at cell 0, u = 1 at cell D - 1), as the replicated corners do.
constexpr bool kSimd8 = true;

// One row's patch table T8[xs][c][q][z] (q: P, Qx, Qz, Qxz) from the grid rows y0, y1:
//   S[c][xg](z) = wy0 Gz[c][y0][xg](z) + wy1 Gz[c][y1][xg](z)
inline void build_table8(const float* Gz, int64_t D, int64_t Hg, int64_t Wg, const Corners<float>& cy, float* S,
                         float* T) {
  const __m256 w0 = _mm256_set1_ps(cy.w0), w1 = _mm256_set1_ps(cy.w1);
  for (int64_t c = 0; c < kC; ++c) {
    const float* r0 = Gz + ((c * Hg + cy.i0) * Wg) * 8;
    const float* r1 = Gz + ((c * Hg + cy.i1) * Wg) * 8;
    for (int64_t xg = 0; xg < Wg; ++xg) {
      _mm256_storeu_ps(S + (xg * kC + c) * 8,
                       _mm256_fmadd_ps(w0, _mm256_loadu_ps(r0 + xg * 8), _mm256_mul_ps(w1, _mm256_loadu_ps(r1 + xg * 8))));
    }
  }
  // lane z of `up` holds lane min(z + 1, D - 1)
  alignas(32) int32_t up_idx[8];
  for (int z = 0; z < 8; ++z) up_idx[z] = int32_t(std::min<int64_t>(z + 1, D - 1));
  const __m256i up = _mm256_load_si256(reinterpret_cast<const __m256i*>(up_idx));
  for (int64_t xs = 0; xs <= Wg; ++xs) {
    const int64_t x0 = std::max<int64_t>(xs - 1, 0), x1 = std::min<int64_t>(xs, Wg - 1);
    for (int64_t c = 0; c < kC; ++c) {
      const __m256 a = _mm256_loadu_ps(S + (x0 * kC + c) * 8), b = _mm256_loadu_ps(S + (x1 * kC + c) * 8);
      const __m256 da = _mm256_sub_ps(_mm256_permutevar8x32_ps(a, up), a);
      const __m256 db = _mm256_sub_ps(_mm256_permutevar8x32_ps(b, up), b);
      float* t = T + ((xs * kC + c) * 4) * 8;
      _mm256_storeu_ps(t, a);
      _mm256_storeu_ps(t + 8, _mm256_sub_ps(b, a));
      _mm256_storeu_ps(t + 16, da);
      _mm256_storeu_ps(t + 24, _mm256_sub_ps(db, da));
    }
  }
}

// out(8 pixels) for colour i from the patch table Tp of one x patch: lanes zi, weights t, u
inline __m256 apply_row8(const float* Tp, int i, __m256i zi, __m256 t, __m256 u, const __m256* in) {
  __m256 o = _mm256_setzero_ps();
  for (int j = 0; j < 4; ++j) {
    const float* q = Tp + (4 * i + j) * 32;
    const __m256 P = _mm256_permutevar8x32_ps(_mm256_loadu_ps(q), zi);
    const __m256 Qx = _mm256_permutevar8x32_ps(_mm256_loadu_ps(q + 8), zi);
    const __m256 Qz = _mm256_permutevar8x32_ps(_mm256_loadu_ps(q + 16), zi);
    const __m256 Qxz = _mm256_permutevar8x32_ps(_mm256_loadu_ps(q + 24), zi);
    // A = (P + t Qx) + u (Qz + t Qxz)
    const __m256 A = _mm256_fmadd_ps(u, _mm256_fmadd_ps(t, Qxz, Qz), _mm256_fmadd_ps(t, Qx, P));
    // out_i = sum_j A_ij in_j + A_i3
    o = j < 3 ? _mm256_fmadd_ps(A, in[j], o) : _mm256_add_ps(o, A);
  }
  return o;
}

// slice + apply for 8 pixels (colours cr, cg, cb; gz = guide D; x patches xs and weights xt of their
// columns) from the row's table T; results into o0, o1, o2 (all 8 lanes written)
inline void slice_apply8v(const float* T, int64_t D, const int32_t* xs, const float* xt, const __m256* in, __m256 gz,
                          __m256* out) {
  // f = clamp(gz - 1/2, 0, D - 1) (NaN -> 0),  k = min(floor f, D - 2),  u = f - k
  __m256 f = _mm256_sub_ps(gz, _mm256_set1_ps(0.5f));
  f = _mm256_min_ps(_mm256_max_ps(f, _mm256_setzero_ps()), _mm256_set1_ps(float(D - 1)));
  const __m256 k = _mm256_min_ps(_mm256_floor_ps(f), _mm256_set1_ps(float(D - 2)));
  const __m256 u = _mm256_sub_ps(f, k);
  const __m256i zi = _mm256_cvttps_epi32(k);
  const __m256 t = _mm256_loadu_ps(xt);
  if (xs[0] == xs[7]) {  // one x patch (nearly always): xs is non-decreasing along the row
    const float* Tp = T + (xs[0] * kC) * 32;
    for (int i = 0; i < 3; ++i) out[i] = apply_row8(Tp, i, zi, t, u, in);
    return;
  }
  // two (or more) x patches: each lane from its own
  const __m256i xsv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xs));
  for (int i = 0; i < 3; ++i) out[i] = _mm256_setzero_ps();
  for (int32_t px = xs[0]; px <= xs[7]; ++px) {
    const __m256 sel = _mm256_castsi256_ps(_mm256_cmpeq_epi32(xsv, _mm256_set1_epi32(px)));
    if (_mm256_movemask_ps(sel) == 0) continue;
    const float* Tp = T + (px * kC) * 32;
    for (int i = 0; i < 3; ++i) out[i] = _mm256_blendv_ps(out[i], apply_row8(Tp, i, zi, t, u, in), sel);
  }
}

// the same from and to arrays (all 8 lanes read and written)
inline void slice_apply8(const float* T, int64_t D, const int32_t* xs, const float* xt, const float* cr,
                         const float* cg, const float* cb, const float* gz, float* o0, float* o1, float* o2) {
  const __m256 in[3] = {_mm256_loadu_ps(cr), _mm256_loadu_ps(cg), _mm256_loadu_ps(cb)};
  __m256 out[3];
  slice_apply8v(T, D, xs, xt, in, _mm256_loadu_ps(gz), out);
  _mm256_storeu_ps(o0, out[0]);
  _mm256_storeu_ps(o1, out[1]);
  _mm256_storeu_ps(o2, out[2]);
}

// The curve guide of 8 pixels. Each f_c is piecewise linear with knots at the shifts: with the knots sorted,
// s_0 <= s_1 <= ... <= s_15, and x'_c in segment j (s_j < x' <= s_{j+1}; s_16 = +inf),
//   mix_c f_c(x') = A_j x' - B_j,   A_j = mix_c sum_{k<=j} slope_k,   B_j = mix_c sum_{k<=j} slope_k s_k
// (x' below s_0 is raised to s_0, where f_c = 0 = A_0 s_0 - B_0 to rounding). With t_m = s_{m+1} (t_15 = +inf),
// j = #{m : t_m < x'} in two levels of 4: q = #{t_3, t_7, t_11 < x'} by three broadcast compares, then
// j = 4 q + #{t_4q, t_4q+1, t_4q+2 < x'} by three lookups in the transposed tables T_r[q] = t_{4q+r}
// (one permute each, 8 lanes hold q in [0, 4)); A_j and B_j from 16-entry tables (two permutes and a blend
// on j >= 8, i.e. t_7 < x'). About 28 vector ops per channel instead of 16 max, 16 FMAs and 32 broadcast
// loads for the relu sum (measured alone at 1080p, one thread: 3.3 ms instead of 5.9 ms).
//   guide = clip(mix_bias + sum_c (A_j(c) x'_c - B_j(c)), 0, 1)
// Up to 16 knots (fewer: padded with +inf knots that no x' passes).
struct Curve8 {
  alignas(32) float t[3][16];     // t_m = s_{m+1} sorted, t_15 = +inf
  alignas(32) float T4[3][3][8];  // T4[c][r][q] = t_{4q+r} (q < 4)
  alignas(32) float A[3][16], Bc[3][16];
  float s0[3], M[9], mb[3], bias;
};

inline Curve8 make_curve8(const CurveParams& cp) {
  TORCH_CHECK(cp.K <= 16, "the 8-pixel curve guide takes up to 16 knots");
  Curve8 c8{};
  for (int c = 0; c < 3; ++c) {
    int order[16];
    for (int k = 0; k < cp.K; ++k) order[k] = k;
    const float* sh = cp.shifts + c * cp.K;
    const float* sl = cp.slopes + c * cp.K;
    std::stable_sort(order, order + cp.K, [&](int a, int b) { return sh[a] < sh[b]; });
    // running sums in double, each coefficient rounded once
    double S = 0., O = 0.;
    for (int j = 0; j < 16; ++j) {
      if (j < cp.K) S += double(sl[order[j]]), O += double(sl[order[j]]) * double(sh[order[j]]);
      c8.A[c][j] = float(double(cp.mix[c]) * S);
      c8.Bc[c][j] = float(double(cp.mix[c]) * O);
      c8.t[c][j] = j + 1 < cp.K ? sh[order[j + 1]] : std::numeric_limits<float>::infinity();
    }
    for (int r = 0; r < 3; ++r)
      for (int q = 0; q < 4; ++q) c8.T4[c][r][q] = c8.t[c][4 * q + r];
    c8.s0[c] = cp.K > 0 ? sh[order[0]] : 0.f;
  }
  std::copy(cp.M, cp.M + 9, c8.M);
  std::copy(cp.mb, cp.mb + 3, c8.mb);
  c8.bias = cp.mix_bias;
  return c8;
}

// entry j in [0, 16) of a 16-float table; up = (j >= 8) as a lane mask
inline __m256 lookup16(const float* tab, __m256i j, __m256 up) {
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(_mm256_load_ps(tab), j),
                          _mm256_permutevar8x32_ps(_mm256_load_ps(tab + 8), j), up);
}

inline __m256 curve_guide8(const Curve8& c8, __m256 r, __m256 g, __m256 b) {
  __m256 acc = _mm256_set1_ps(c8.bias);
  for (int c = 0; c < 3; ++c) {
    // x'_c = max(M_c0 r + M_c1 g + M_c2 b + b_c, s_0)
    __m256 x = _mm256_fmadd_ps(_mm256_set1_ps(c8.M[3 * c]), r,
                               _mm256_fmadd_ps(_mm256_set1_ps(c8.M[3 * c + 1]), g,
                                               _mm256_fmadd_ps(_mm256_set1_ps(c8.M[3 * c + 2]), b,
                                                               _mm256_set1_ps(c8.mb[c]))));
    x = _mm256_max_ps(x, _mm256_set1_ps(c8.s0[c]));
    // q = #{t_3, t_7, t_11 < x'} (a true compare is -1 as an integer)
    const __m256 lt3 = _mm256_cmp_ps(_mm256_set1_ps(c8.t[c][3]), x, _CMP_LT_OQ);
    const __m256 up = _mm256_cmp_ps(_mm256_set1_ps(c8.t[c][7]), x, _CMP_LT_OQ);
    const __m256 lt11 = _mm256_cmp_ps(_mm256_set1_ps(c8.t[c][11]), x, _CMP_LT_OQ);
    const __m256i q = _mm256_sub_epi32(_mm256_sub_epi32(_mm256_setzero_si256(), _mm256_castps_si256(lt3)),
                                       _mm256_add_epi32(_mm256_castps_si256(up), _mm256_castps_si256(lt11)));
    // j = 4 q + #{t_4q+r < x' : r = 0, 1, 2}
    __m256i j = _mm256_slli_epi32(q, 2);
    for (int rr = 0; rr < 3; ++rr) {
      const __m256 s = _mm256_permutevar8x32_ps(_mm256_load_ps(c8.T4[c][rr]), q);
      j = _mm256_sub_epi32(j, _mm256_castps_si256(_mm256_cmp_ps(s, x, _CMP_LT_OQ)));
    }
    // mix_c f_c = A_j x' - B_j
    acc = _mm256_add_ps(acc, _mm256_fmsub_ps(lookup16(c8.A[c], j, up), x, lookup16(c8.Bc[c], j, up)));
  }
  // clip to [0, 1]
  return _mm256_min_ps(_mm256_max_ps(acc, _mm256_setzero_ps()), _mm256_set1_ps(1.f));
}

// ---- 8 pixels' colours in three registers and back, for the layouts the 8-pixel pass reads directly:
// float planes, 8-bit planes (sw = 1) and 8-bit interleaved pixels (sw = 3, sc = 1: r g b r g b ..., as decoded).
// 8-bit values v become v / 255 correctly rounded, as torch's division; results become
// floor(255 clamp(v, 0, 1) + 1/2) (course_lib.images.to_uint8), with the same mul-then-add rounding.
enum class Layout8 { kFloatPlanes, kBytePlanes, kByteInterleaved };

// RN(v / 255) for integers v in [0, 255] without a division (vdivps: about 5 cycles a register here):
// q = RN(v r) with r = RN(1/255), the residual e = v - 255 q exact by fma, RN(q + e r) = RN(v / 255)
// (for all 256 values: test_fastslice checks the 8-bit pass on every value)
inline __m256 div255_8(__m256 v) {
  const __m256 r = _mm256_set1_ps(1.0f / 255.0f);
  const __m256 q = _mm256_mul_ps(v, r);
  return _mm256_fmadd_ps(_mm256_fnmadd_ps(q, _mm256_set1_ps(255.f), v), r, q);
}

// 8 interleaved pixels, 24 bytes: two loads, one dword permute to put pixels 0-3 in the low 128-bit lane and
// 4-7 in the high one (12 bytes each), then per colour a byte shuffle straight into zero-extended int32 lanes
// (instead of 24 scalar table lookups)
inline void load8_interleaved(const uint8_t* p, __m256* in) {
  const __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
                                            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 16)), 1);
  // bytes 0-11 | 12-23
  const __m256i w = _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 1, 2, 2, 3, 4, 5, 5));
  for (int ch = 0; ch < 3; ++ch) {
    // int32 lane k of each half: byte 3 k + ch
    const __m256i sel = _mm256_setr_epi8(ch, -1, -1, -1, 3 + ch, -1, -1, -1, 6 + ch, -1, -1, -1, 9 + ch, -1, -1, -1,
                                         ch, -1, -1, -1, 3 + ch, -1, -1, -1, 6 + ch, -1, -1, -1, 9 + ch, -1, -1, -1);
    in[ch] = div255_8(_mm256_cvtepi32_ps(_mm256_shuffle_epi8(w, sel)));
  }
}

// 255 min(v, 1) + 1/2 truncated: int32, <= 255; values below 0 (v < 0, also -inf and NaN: the integer
// 0x80000000) are clamped to 0 by the unsigned saturation of the packs that follow, as clamp(v, 0, 1) would
// (min(1, v) keeps a NaN)
inline __m256i to_byte_values8(__m256 v) {
  v = _mm256_min_ps(_mm256_set1_ps(1.f), v);
  return _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(v, _mm256_set1_ps(255.f)), _mm256_set1_ps(0.5f)));
}

// the inverse: pack to bytes (r0-3 g0-3 b0-3 | r4-7 g4-7 b4-7 per 128-bit lane), interleave within each lane,
// move the two 12-byte halves together, store 16 + 8 bytes
inline void store8_interleaved(uint8_t* p, const __m256* out) {
  const __m256i R = to_byte_values8(out[0]), G = to_byte_values8(out[1]), B = to_byte_values8(out[2]);
  const __m256i bytes = _mm256_packus_epi16(_mm256_packus_epi32(R, G), _mm256_packus_epi32(B, B));
  const __m256i il = _mm256_shuffle_epi8(bytes, _mm256_setr_epi8(0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11, -1, -1, -1, -1,
                                                                 0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11, -1, -1, -1, -1));
  const __m256i packed = _mm256_permutevar8x32_epi32(il, _mm256_setr_epi32(0, 1, 2, 4, 5, 6, 7, 7));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(p + 16), _mm256_extracti128_si256(packed, 1));
}

// A row straight from the photo to the result, 8 pixels at a time: colours loaded as `layout` says, the guide
// read from `grow` (kGuide < 0) or computed (the curve guide), slice + apply, optional clamp to [0, 1] (8-bit:
// always, with the rounding), stored in the same layout. No chunk buffers: a pixel's values stay in registers.
// (Non-temporal stores measured 1.5x slower here than plain ones into a reused buffer.)
// Returns the pixels done, W rounded down to a multiple of 8.
template <Layout8 layout, int kGuide, typename px_t>
__attribute__((noinline)) int64_t row8(const float* T, int64_t D, const int32_t* xs, const float* xt, const px_t* ip,
                                       int64_t isc, const float* grow, const Curve8* c8, bool clamp_out, px_t* dp,
                                       int64_t osc, int64_t W) {
  const int64_t W8 = W & ~int64_t(7);
  const __m256 dz = _mm256_set1_ps(float(D)), zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.f);
  auto load = [&](int64_t x, __m256* in) {
    if constexpr (layout == Layout8::kFloatPlanes) {
      for (int ch = 0; ch < 3; ++ch) in[ch] = _mm256_loadu_ps(ip + ch * isc + x);
    } else if constexpr (layout == Layout8::kBytePlanes) {
      for (int ch = 0; ch < 3; ++ch) {
        const __m128i b8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(ip + ch * isc + x));
        in[ch] = div255_8(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b8)));
      }
    } else {
      load8_interleaved(ip + 3 * x, in);
    }
  };
  auto store = [&](int64_t x, __m256* out) {
    if constexpr (layout == Layout8::kFloatPlanes) {
      for (int i = 0; i < 3; ++i) {
        if (clamp_out) out[i] = _mm256_min_ps(_mm256_max_ps(out[i], zero), one);
        _mm256_storeu_ps(dp + i * osc + x, out[i]);
      }
    } else if constexpr (layout == Layout8::kBytePlanes) {
      for (int i = 0; i < 3; ++i) {
        const __m256i v = to_byte_values8(out[i]);
        // int32 -> 8 bytes: packs per 128-bit lane, then the two lanes' low dwords together
        const __m256i b = _mm256_packus_epi16(_mm256_packus_epi32(v, v), _mm256_setzero_si256());
        const __m256i lo = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(dp + i * osc + x), _mm256_castsi256_si128(lo));
      }
    } else {
      store8_interleaved(dp + 3 * x, out);
    }
  };
  if constexpr (kGuide < 0 && layout == Layout8::kFloatPlanes) {
    for (int64_t x = 0; x < W8; x += 8) {
      __m256 in[3], out[3];
      load(x, in);
      slice_apply8v(T, D, xs + x, xt + x, in, _mm256_mul_ps(_mm256_loadu_ps(grow + x), dz), out);
      store(x, out);
    }
  } else {
    // with the curve guide, or 8-bit pixels: in spans of kSpan pixels, two loops (8-bit: three): colours and
    // guide into L1 buffers, then slice + apply (8-bit: into the buffers, then rounded and stored). Each loop's
    // chain per 8 pixels is shorter, so the core overlaps more groups (1080p, one thread: float with the curve
    // 8.6 ms instead of 10.0 in one loop; 8-bit with a guide map 5.1 instead of 5.2)
    constexpr int64_t kSpan = 128;
    alignas(32) float buf[4][kSpan];
    for (int64_t x0 = 0; x0 < W8; x0 += kSpan) {
      const int64_t n = std::min<int64_t>(kSpan, W8 - x0);
      for (int64_t k = 0; k < n; k += 8) {
        __m256 in[3];
        load(x0 + k, in);
        for (int ch = 0; ch < 3; ++ch) _mm256_store_ps(buf[ch] + k, in[ch]);
        if constexpr (kGuide < 0) {
          _mm256_store_ps(buf[3] + k, _mm256_mul_ps(_mm256_loadu_ps(grow + x0 + k), dz));
        } else {
          _mm256_store_ps(buf[3] + k, _mm256_mul_ps(curve_guide8(*c8, in[0], in[1], in[2]), dz));
        }
      }
      for (int64_t k = 0; k < n; k += 8) {
        const __m256 in[3] = {_mm256_load_ps(buf[0] + k), _mm256_load_ps(buf[1] + k), _mm256_load_ps(buf[2] + k)};
        __m256 out[3];
        slice_apply8v(T, D, xs + x0 + k, xt + x0 + k, in, _mm256_load_ps(buf[3] + k), out);
        if constexpr (layout == Layout8::kFloatPlanes) {
          store(x0 + k, out);
        } else {
          for (int ch = 0; ch < 3; ++ch) _mm256_store_ps(buf[ch] + k, out[ch]);
        }
      }
      if constexpr (layout != Layout8::kFloatPlanes) {
        for (int64_t k = 0; k < n; k += 8) {
          __m256 out[3] = {_mm256_load_ps(buf[0] + k), _mm256_load_ps(buf[1] + k), _mm256_load_ps(buf[2] + k)};
          store(x0 + k, out);
        }
      }
    }
  }
  return W8;
}
#else
constexpr bool kSimd8 = false;
#endif

// The 16-pixel path runs where this build has it and ATen's own kernels may use AVX-512 too:
// ATEN_CPU_CAPABILITY=default (or avx2) selects the portable loops at run time, so one build
// tests both paths on an AVX-512 machine. Read once (ATen reads the variable once as well).
inline bool simd_allowed() {
  static const bool allowed = kSimd && at::get_cpu_capability() == "AVX512";
  return allowed;
}

// The 8-pixel path likewise: where this build has AVX2 and ATen may use AVX2 (or AVX-512) kernels.
inline bool simd8_allowed() {
  static const bool allowed = kSimd8 && (at::get_cpu_capability() == "AVX2" || at::get_cpu_capability() == "AVX512");
  return allowed;
}

// Which pointwise path runs here: "avx512", "avx2" or "portable"
inline std::string simd_path() {
  return simd_allowed() ? "avx512" : (simd8_allowed() ? "avx2" : "portable");
}

// kGuide: -1 the guide is read from gd; 0 the curve guide with a runtime knot count; K > 0 with K knots
template <typename in_t, typename gd_t, typename out_t, typename acc_t, int kGuide>
void pointwise_kernel(const acc_t* gp, const gd_t* gd, const in_t* im, Strides is, out_t* op, Strides os,
                      const CurveParams* cp, bool clamp_out, int64_t B, int64_t H, int64_t W, int64_t D,
                      int64_t Hg, int64_t Wg) {
  // colours of 8-bit images: v / 255 exactly as torch computes it (float division, rounded)
  float lut[256];
  for (int v = 0; v < 256; ++v) lut[v] = float(v) / 255.0f;
  // per column: x patch and weight, gx = (x + 1/2) Wg / W
  // (8 more entries: the 8-pixel path reads whole groups of 8 past the row's end)
  std::vector<int32_t> xs(W + 8, 0);
  std::vector<acc_t> xt(W + 8, acc_t(0));
  for (int64_t x = 0; x < W; ++x) patch_of<acc_t>((acc_t(x) + acc_t(0.5)) * acc_t(Wg) / acc_t(W), Wg, xs[x], xt[x]);
  for (int64_t x = W; x < W + 8; ++x) xs[x] = xs[std::max<int64_t>(W - 1, 0)];
  const acc_t dz = acc_t(D);
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(W, 1));
  // the 16-pixel path: float arithmetic and at most 16 z patches
  const bool simd = simd_allowed() && std::is_same_v<acc_t, float> && D <= 16;
  // the 8-pixel path: float arithmetic and 2 to 8 z cells
  const bool simd8 = !simd && simd8_allowed() && std::is_same_v<acc_t, float> && D >= 2 && D <= 8;
  // ... and its curve guide: up to 16 knots (more: the portable guide, through the chunk buffers)
  const bool curve8 = simd8 && (kGuide < 0 || cp->K <= 16);  // (with a guide map: always)
  // the curve's knots, copied (portable path)
  std::vector<float> curve_shifts, curve_slopes;
  if (cp != nullptr) {
    curve_shifts.assign(cp->shifts, cp->shifts + 3 * cp->K);
    curve_slopes.assign(cp->slopes, cp->slopes + 3 * cp->K);
  }
  std::vector<float> Gz;
#if defined(COURSE_SIMD16)
  CurveSimd cs;
  if constexpr (std::is_same_v<acc_t, float>) {
    if (simd) Gz = grid_z_innermost(gp, B, D, Hg, Wg, 16);
  }
  if constexpr (kGuide == 16) {
    if (simd) cs = make_curve_simd(*cp);
  }
#endif
  std::vector<float> Gz8;
#if defined(__AVX2__) && defined(__FMA__)
  Curve8 c8;
  if constexpr (std::is_same_v<acc_t, float>) {
    if (simd8) Gz8 = grid_z_innermost(gp, B, D, Hg, Wg, 8);
  }
  if constexpr (kGuide >= 0) {
    if (simd8 && cp->K <= 16) c8 = make_curve8(*cp);
  }
#endif
  at::parallel_for(0, B * H, grain, [&](int64_t begin, int64_t end) {
    // padding lanes (i = 3) stay zero: build_slab only writes p = 4 j + i with i < 3
    std::vector<acc_t> slab(D * Wg * kPad, acc_t(0)), table((D + 1) * (Wg + 1) * kPatch);
    std::vector<float> slab16(simd ? kC * Wg * 16 : 0), table16(simd ? (Wg + 1) * kC * 64 : 0);
    std::vector<float> slab8(simd8 ? kC * Wg * 8 : 0), table8(simd8 ? (Wg + 1) * kC * 32 : 0);
    alignas(64) acc_t cr[kChunk], cg[kChunk], cb[kChunk], zu[kChunk], o0[kChunk], o1[kChunk], o2[kChunk];
    alignas(64) int32_t zoff[kChunk];
    acc_t* T = table.data();
    int64_t last_b = -1, last_y0 = -1, last_y1 = -1;
    acc_t last_w1 = acc_t(-1);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H, y = row % H;
      // gy = (y + 1/2) Hg / H
      const auto cy = corners<acc_t>((acc_t(y) + acc_t(0.5)) * acc_t(Hg) / acc_t(H), Hg);
      if (b != last_b || cy.i0 != last_y0 || cy.i1 != last_y1 || cy.w1 != last_w1) {
        bool built = false;
#if defined(COURSE_SIMD16)
        if constexpr (std::is_same_v<acc_t, float>) {
          if (simd) build_table16(Gz.data() + b * kC * Hg * Wg * 16, D, Hg, Wg, cy, slab16.data(), table16.data());
          built = simd;
        }
#endif
#if defined(__AVX2__) && defined(__FMA__)
        if constexpr (std::is_same_v<acc_t, float>) {
          if (simd8) build_table8(Gz8.data() + b * kC * Hg * Wg * 8, D, Hg, Wg, cy, slab8.data(), table8.data());
          built = built || simd8;
        }
#endif
        if (!built) {
          build_slab<acc_t, acc_t, true>(gp + b * kC * D * Hg * Wg, D, Hg, Wg, cy, slab.data());
          build_patches<acc_t>(slab.data(), D, Wg, T);
        }
        last_b = b, last_y0 = cy.i0, last_y1 = cy.i1, last_w1 = cy.w1;
      }
      const in_t* ip = im + b * is.sb + y * is.sh;
      out_t* dst = op + b * os.sb + y * os.sh;
      int64_t x_done = 0;
#if defined(COURSE_SIMD16)
      if constexpr (std::is_same_v<in_t, out_t> && std::is_same_v<acc_t, float> && (kGuide < 0 || kGuide == 16) &&
                    (std::is_same_v<in_t, float> || std::is_same_v<in_t, uint8_t>)) {
        const float* grow = nullptr;
        if constexpr (kGuide < 0) grow = gd + b * H * W + y * W;
        // float planes; 8-bit planes or interleaved pixels
        const bool direct = std::is_same_v<in_t, float>
                                ? is.sw == 1 && os.sw == 1
                                : (is.sw == 1 && os.sw == 1) || (is.sw == 3 && is.sc == 1 && os.sw == 3 && os.sc == 1);
        if (simd && direct) {
          x_done = row16<in_t, kGuide>(table16.data(), D, xs.data(), xt.data(), ip, is, grow, &cs, clamp_out, dst, os,
                                       W);
        }
      }
#endif
#if defined(__AVX2__) && defined(__FMA__)
      if constexpr (std::is_same_v<in_t, out_t> && std::is_same_v<acc_t, float> &&
                    (std::is_same_v<in_t, float> || std::is_same_v<in_t, uint8_t>)) {
        const float* grow = nullptr;
        if constexpr (kGuide < 0) grow = gd + b * H * W + y * W;
        const float* T8 = table8.data();
        if (curve8 && is.sw == 1 && os.sw == 1) {
          constexpr Layout8 planes = std::is_same_v<in_t, float> ? Layout8::kFloatPlanes : Layout8::kBytePlanes;
          x_done = row8<planes, kGuide>(T8, D, xs.data(), xt.data(), ip, is.sc, grow, &c8, clamp_out, dst, os.sc, W);
        }
        if constexpr (std::is_same_v<in_t, uint8_t>) {
          if (curve8 && is.sw == 3 && is.sc == 1 && os.sw == 3 && os.sc == 1) {
            x_done = row8<Layout8::kByteInterleaved, kGuide>(T8, D, xs.data(), xt.data(), ip, 1, grow, &c8, clamp_out,
                                                             dst, 1, W);
          }
        }
      }
#endif
      for (int64_t x0c = x_done; x0c < W; x0c += kChunk) {
        const int64_t n = std::min<int64_t>(kChunk, W - x0c);
        // (1) colours (8-bit planes or interleaved pixels: 16 at a time)
        int64_t k_done = 0;
#if defined(COURSE_SIMD16)
        if constexpr (std::is_same_v<in_t, uint8_t> && std::is_same_v<acc_t, float>) {
          if (simd && (is.sw == 1 || (is.sw == 3 && is.sc == 1))) {
            for (; k_done + 16 <= n; k_done += 16) {
              __m512 in[3];
              load16_u8(ip + (x0c + k_done) * is.sw, is.sc, is.sw, in);
              _mm512_store_ps(cr + k_done, in[0]), _mm512_store_ps(cg + k_done, in[1]), _mm512_store_ps(cb + k_done, in[2]);
            }
          }
        }
#endif
        if constexpr (!std::is_same_v<in_t, uint8_t>) {
          if (is.sw == 1) {  // float planes: contiguous runs
            const in_t* p0 = ip + x0c;
#pragma omp simd
            for (int64_t k = 0; k < n; ++k) {
              cr[k] = acc_t(p0[k]), cg[k] = acc_t(p0[is.sc + k]), cb[k] = acc_t(p0[2 * is.sc + k]);
            }
            k_done = n;
          }
        }
        {
          // strides in locals: 8-bit loads may alias anything, which would reload them per pixel
          const int64_t sw = is.sw, sc = is.sc;
          const in_t* __restrict src = ip + x0c * sw;
          for (int64_t k = k_done; k < n; ++k) {
            cr[k] = to_acc<acc_t>(src[k * sw], lut);
            cg[k] = to_acc<acc_t>(src[k * sw + sc], lut);
            cb[k] = to_acc<acc_t>(src[k * sw + 2 * sc], lut);
          }
        }
        // (2) the guide, times D: gz
        bool guide_done = false;
#if defined(COURSE_SIMD16)
        if constexpr (kGuide == 16 && std::is_same_v<acc_t, float>) {
          if (simd) {
            for (int64_t k = 0; k < n; k += 16) {
              const __mmask16 v = __mmask16((1u << std::min<int64_t>(16, n - k)) - 1u);
              const __m512 gz = _mm512_mul_ps(curve_guide16(cs, _mm512_maskz_loadu_ps(v, cr + k), _mm512_maskz_loadu_ps(v, cg + k),
                                                            _mm512_maskz_loadu_ps(v, cb + k)),
                                              _mm512_set1_ps(float(D)));
              _mm512_mask_storeu_ps(zu + k, v, gz);
            }
            guide_done = true;
          }
        }
#endif
#if defined(__AVX2__) && defined(__FMA__)
        if constexpr (kGuide >= 0 && std::is_same_v<acc_t, float>) {
          if (curve8) {
            // whole groups of 8 (the chunk buffers have room; lanes past n are never written out)
            const __m256 dz8 = _mm256_set1_ps(float(D));
            for (int64_t k = 0; k < n; k += 8) {
              _mm256_store_ps(zu + k, _mm256_mul_ps(curve_guide8(c8, _mm256_load_ps(cr + k), _mm256_load_ps(cg + k),
                                                                 _mm256_load_ps(cb + k)), dz8));
            }
            guide_done = true;
          }
        }
#endif
        if constexpr (kGuide < 0) {
          const gd_t* g_row = gd + b * H * W + y * W + x0c;
          for (int64_t k = 0; k < n; ++k) zu[k] = acc_t(g_row[k]) * dz;
        } else {
          if (!guide_done) {
            curve_guide_span<acc_t, acc_t, (kGuide > 0 ? kGuide : 0)>(
                cr, cg, cb, cp->M, cp->mb, curve_shifts.data(), curve_slopes.data(), cp->mix, cp->mix_bias, zu, n, cp->K);
            for (int64_t k = 0; k < n; ++k) zu[k] *= dz;
          }
        }
        bool sliced = false;
#if defined(COURSE_SIMD16)
        if constexpr (std::is_same_v<acc_t, float>) {
          if (simd) {
            for (int64_t k = 0; k < n; k += 16) {
              slice_apply16(table16.data(), D, xs.data() + x0c + k, xt.data() + x0c + k, cr + k, cg + k, cb + k, zu + k,
                            o0 + k, o1 + k, o2 + k, std::min<int64_t>(16, n - k));
            }
            sliced = true;
          }
        }
#endif
#if defined(__AVX2__) && defined(__FMA__)
        if constexpr (std::is_same_v<acc_t, float>) {
          if (simd8) {
            for (int64_t k = 0; k < n; k += 8) {
              slice_apply8(table8.data(), D, xs.data() + x0c + k, xt.data() + x0c + k, cr + k, cg + k, cb + k, zu + k,
                           o0 + k, o1 + k, o2 + k);
            }
            sliced = true;
          }
        }
#endif
        if (!sliced) {
          // (3) z patch offset and weight u
          const int32_t zstride = int32_t((Wg + 1) * kPatch);
          for (int64_t k = 0; k < n; ++k) {
            int32_t zs;
            acc_t u;
            patch_of<acc_t>(zu[k], D, zs, u);
            zoff[k] = zs * zstride;
            zu[k] = u;
          }
          // (4) slice + apply: A = P + t Qx + u (Qz + t Qxz), out_i = A_i0 r + A_i1 g + A_i2 b + A_i3
          for (int64_t k = 0; k < n; ++k) {
            const int64_t x = x0c + k;
            const acc_t* P = T + zoff[k] + xs[x] * kPatch;
            const acc_t t = xt[x], u = zu[k];
            alignas(64) acc_t a[kPad];
#pragma omp simd aligned(a : 64)
            for (int64_t p = 0; p < kPad; ++p) a[p] = P[p] + t * P[kPad + p] + u * (P[2 * kPad + p] + t * P[3 * kPad + p]);
            const acc_t r = cr[k], g = cg[k], bl = cb[k];
            alignas(16) acc_t o[4];
#pragma omp simd aligned(o : 16)
            for (int64_t i = 0; i < 4; ++i) o[i] = a[i] * r + a[4 + i] * g + a[8 + i] * bl + a[12 + i];
            o0[k] = o[0], o1[k] = o[1], o2[k] = o[2];
          }
        }
        // (5) write
        if constexpr (std::is_same_v<out_t, uint8_t>) {
          int64_t k_clamped = 0;
#if defined(__AVX2__) && defined(__FMA__)
          if constexpr (std::is_same_v<acc_t, float>) {
            // branch-free, 8 at a time (the scalar loop below compiled to compares and jumps, which
            // mispredict on photo data); whole groups of 8 fit the chunk buffers
            const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.f), c255 = _mm256_set1_ps(255.f),
                         half = _mm256_set1_ps(0.5f);
            acc_t* os3[3] = {o0, o1, o2};
            for (; k_clamped < n; k_clamped += 8) {
              for (acc_t* o : os3) {
                const __m256 v = _mm256_min_ps(_mm256_max_ps(_mm256_loadu_ps(o + k_clamped), zero), one);
                _mm256_storeu_ps(o + k_clamped, _mm256_add_ps(_mm256_mul_ps(v, c255), half));
              }
            }
          }
#endif
#pragma omp simd
          for (int64_t k = k_clamped; k < n; ++k) {
            // clamp to [0, 1], then v * 255 + 1/2 truncated (course_lib.images.to_uint8)
            o0[k] = std::min(std::max(o0[k], acc_t(0)), acc_t(1)) * acc_t(255) + acc_t(0.5);
            o1[k] = std::min(std::max(o1[k], acc_t(0)), acc_t(1)) * acc_t(255) + acc_t(0.5);
            o2[k] = std::min(std::max(o2[k], acc_t(0)), acc_t(1)) * acc_t(255) + acc_t(0.5);
          }
          int64_t k_out = 0;
#if defined(COURSE_SIMD16)
          if (simd && (os.sw == 1 || (os.sw == 3 && os.sc == 1))) {
            for (; k_out + 16 <= n; k_out += 16) {
              const __m512 rounded[3] = {_mm512_load_ps(o0 + k_out), _mm512_load_ps(o1 + k_out), _mm512_load_ps(o2 + k_out)};
              store16_u8(dst + (x0c + k_out) * os.sw, os.sc, os.sw, rounded);
            }
          }
#endif
          // to int32 first (vectorised; values in [0.5, 255.5]), then byte stores with the strides in
          // locals: a byte store may alias anything, which would reload them and o0..o2 per pixel
          alignas(64) int32_t q0[kChunk], q1[kChunk], q2[kChunk];
#pragma omp simd
          for (int64_t k = 0; k < n; ++k) q0[k] = int32_t(o0[k]), q1[k] = int32_t(o1[k]), q2[k] = int32_t(o2[k]);
          const int64_t sw = os.sw, sc = os.sc;
          uint8_t* __restrict d8 = reinterpret_cast<uint8_t*>(dst) + x0c * sw;
          for (int64_t k = k_out; k < n; ++k) {
            d8[k * sw] = uint8_t(q0[k]), d8[k * sw + sc] = uint8_t(q1[k]), d8[k * sw + 2 * sc] = uint8_t(q2[k]);
          }
        } else {
          if (clamp_out) {
#pragma omp simd
            for (int64_t k = 0; k < n; ++k) {
              o0[k] = std::min(std::max(o0[k], acc_t(0)), acc_t(1));
              o1[k] = std::min(std::max(o1[k], acc_t(0)), acc_t(1));
              o2[k] = std::min(std::max(o2[k], acc_t(0)), acc_t(1));
            }
          }
          if (os.sw == 1) {
            out_t* d0 = dst + x0c;
#pragma omp simd
            for (int64_t k = 0; k < n; ++k) {
              d0[k] = out_t(o0[k]), d0[os.sc + k] = out_t(o1[k]), d0[2 * os.sc + k] = out_t(o2[k]);
            }
          } else {
            for (int64_t k = 0; k < n; ++k) {
              out_t* px = dst + (x0c + k) * os.sw;
              px[0] = out_t(o0[k]), px[os.sc] = out_t(o1[k]), px[2 * os.sc] = out_t(o2[k]);
            }
          }
        }
      }
    }
  });
}

// Antialiased resize (torch's bilinear with antialias=True: a tent filter as wide as the scale),
// separable, vertical first: for each output row, the weighted sum of its input rows (one row of
// floats), then the weighted sum along x. Weights come precomputed: output row oy reads rows
// ymin[oy] .. ymin[oy] + Ky - 1 with weights wy[oy, :] (zeros past the support). Any input layout
// (strides), 8-bit or float; output (B, 3, h, w) float32 clipped to [0, 1].
template <typename in_t>
void resize_kernel(const in_t* im, Strides is, float* op, int64_t B, int64_t H, int64_t W, int64_t h, int64_t w,
                   const int64_t* ymin, const float* wy, int64_t Ky, const int64_t* xmin, const float* wx,
                   int64_t Kx) {
  float lut[256];
  for (int v = 0; v < 256; ++v) lut[v] = float(v) / 255.0f;
  // interleaved pixels (r g b r g b ...): a row is 3 W contiguous values, summed as they are
  const bool interleaved = is.sc == 1 && is.sw == 3;
  // line[c * W + x] (planes) or line[3 x + c] (interleaved): element stride of x and of c in the line
  const int64_t lx = interleaved ? 3 : 1, lc = interleaved ? 1 : W;
  // with AVX2: the x taps zero-padded to a multiple of 8 (the line gets as many zeros at its end; an interleaved
  // line is made planes first)
  const int64_t Kp = (Kx + 7) / 8 * 8;
  std::vector<float> wxp;
#if defined(__AVX2__) && defined(__FMA__)
  const bool taps8 = simd8_allowed();
  if (taps8) {
    wxp.assign(w * Kp, 0.f);
    for (int64_t ox = 0; ox < w; ++ox) std::copy(wx + ox * Kx, wx + ox * Kx + Kx, wxp.begin() + ox * Kp);
  }
#endif
  at::parallel_for(0, B * h, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> line(3 * W + Kp, 0.f), planes(interleaved ? 3 * W + Kp : 0, 0.f);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / h, oy = row % h;
      std::fill(line.begin(), line.begin() + 3 * W, 0.f);
      float* l = line.data();
      // vertical: line = sum_j wy[oy, j] image[ymin + j]
      for (int64_t j = 0; j < Ky; ++j) {
        const float wgt = wy[oy * Ky + j];
        const int64_t yy = ymin[oy] + j;
        if (wgt == 0.f || yy >= H) continue;
        const in_t* src = im + b * is.sb + yy * is.sh;
        if (interleaved) {
          if constexpr (std::is_same_v<in_t, uint8_t>) {
            // (w / 255) v: no table lookup, so the loop vectorises (same value to float rounding)
            const float w255 = wgt / 255.0f;
#pragma omp simd
            for (int64_t e = 0; e < 3 * W; ++e) l[e] += w255 * float(src[e]);
          } else {
#pragma omp simd
            for (int64_t e = 0; e < 3 * W; ++e) l[e] += wgt * float(src[e]);
          }
          continue;
        }
        for (int64_t c = 0; c < 3; ++c) {
          const in_t* s = src + c * is.sc;
          float* lcp = l + c * W;
          if (is.sw == 1) {
            const float w1 = std::is_same_v<in_t, uint8_t> ? wgt / 255.0f : wgt;
#pragma omp simd
            for (int64_t x = 0; x < W; ++x) lcp[x] += w1 * float(s[x]);
          } else {
            for (int64_t x = 0; x < W; ++x) lcp[x] += wgt * to_acc<float>(s[x * is.sw], lut);
          }
        }
      }
      // horizontal: out[ox] = sum_j wx[ox, j] line[xmin + j]
#if defined(__AVX2__) && defined(__FMA__)
      if (taps8) {  // 8 taps per multiply-add (the zero taps past a support read finite values), then a sum
        if (interleaved) {  // the line as planes first (3 W moves instead of strided taps for every output)
          for (int64_t c = 0; c < 3; ++c)
            for (int64_t x = 0; x < W; ++x) planes[c * W + x] = l[3 * x + c];
          l = planes.data();
        }
        for (int64_t c = 0; c < 3; ++c) {
          float* d = op + ((b * 3 + c) * h + oy) * w;
          const float* lc0 = l + c * W;
          for (int64_t ox = 0; ox < w; ++ox) {
            const float* wgt = wxp.data() + ox * Kp;
            const float* src = lc0 + xmin[ox];
            __m256 acc = _mm256_mul_ps(_mm256_loadu_ps(wgt), _mm256_loadu_ps(src));
            for (int64_t j = 8; j < Kp; j += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(wgt + j), _mm256_loadu_ps(src + j), acc);
            __m128 v = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
            v = _mm_add_ps(v, _mm_movehl_ps(v, v));
            v = _mm_add_ss(v, _mm_movehdup_ps(v));
            // clip to [0, 1]
            d[ox] = _mm_cvtss_f32(_mm_min_ss(_mm_max_ss(v, _mm_setzero_ps()), _mm_set_ss(1.f)));
          }
        }
        continue;
      }
#endif
      for (int64_t c = 0; c < 3; ++c) {
        float* d = op + ((b * 3 + c) * h + oy) * w;
        const float* lc0 = l + c * lc;
        for (int64_t ox = 0; ox < w; ++ox) {
          const float* wgt = wx + ox * Kx;
          const float* s = lc0 + xmin[ox] * lx;
          const int64_t kmax = std::min<int64_t>(Kx, W - xmin[ox]);
          float acc = 0.f;
#pragma omp simd reduction(+ : acc)
          for (int64_t j = 0; j < kmax; ++j) acc += wgt[j] * s[j * lx];
          d[ox] = std::min(std::max(acc, 0.f), 1.f);
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
  const int64_t HW = H * W;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(W, 1));
  at::parallel_for(0, B * H, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H, y = row % H;
      const scalar_t* r_row = im + b * 3 * HW + y * W;
      scalar_t* o_row = out + b * HW + y * W;
      curve_guide_span<scalar_t, scalar_t, kK>(r_row, r_row + HW, r_row + 2 * HW, M, mb, shifts, slopes, mix, mix_bias,
                                               o_row, W, K_runtime);
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

// Check / make the destination of a pointwise pass: `out` (any strides, e.g. a reused buffer) or a new
// tensor laid out like `like`
at::Tensor destination(const std::optional<at::Tensor>& out, const at::Tensor& like, at::ScalarType dtype) {
  if (out.has_value() && out->defined()) {
    TORCH_CHECK(out->sizes() == like.sizes(), "out must have shape ", like.sizes(), ", got ", out->sizes());
    TORCH_CHECK(out->scalar_type() == dtype, "out must be ", dtype, ", got ", out->scalar_type());
    TORCH_CHECK(!out->is_cuda(), "CPU tensors expected");
    return *out;
  }
  return at::empty_like(like, like.options().dtype(dtype));
}

// out (B, 3, H, W) = slice(grid, guide) applied to image; `out` may be given (written in place)
at::Tensor slice_apply_forward(at::Tensor grid, at::Tensor guide, at::Tensor image, std::optional<at::Tensor> out) {
  check_inputs(grid, guide, image);
  guide = guide.contiguous();
  image = image.contiguous();
  at::Tensor dst = destination(out, image, image.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, image.scalar_type(), "slice_apply_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor g = grid.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    pointwise_kernel<scalar_t, scalar_t, scalar_t, acc_t, -1>(
        g.data_ptr<acc_t>(), guide.data_ptr<scalar_t>(), image.data_ptr<scalar_t>(), strides_of(image),
        dst.data_ptr<scalar_t>(), strides_of(dst), nullptr, false, image.size(0), image.size(2), image.size(3),
        grid.size(2), grid.size(3), grid.size(4));
  });
  return dst;
}

// One pass from photo to result: out = clamp(slice(grid, curve_guide(image)) applied to image).
// image (B, 3, H, W), float32 or uint8 (any strides: a (B, H, W, 3) photo permuted is fine); out of
// the same dtype (uint8: rounded) and, when not given, the same layout. `guide` (B, H, W) float32,
// if defined, replaces the curve guide (other guide modules). float32 arithmetic throughout.
at::Tensor retouch_forward(at::Tensor grid, at::Tensor image, std::optional<at::Tensor> guide, at::Tensor ccm,
                           at::Tensor ccm_bias, at::Tensor shifts, at::Tensor slopes, at::Tensor mix,
                           double mix_bias, bool clamp_out, std::optional<at::Tensor> out) {
  TORCH_CHECK(grid.dim() == 5 && grid.size(1) == kC, "grid must be (B, 12, D, Hg, Wg), got ", grid.sizes());
  TORCH_CHECK(image.dim() == 4 && image.size(1) == 3, "image must be (B, 3, H, W), got ", image.sizes());
  TORCH_CHECK(grid.size(0) == image.size(0), "batch sizes differ");
  TORCH_CHECK(image.scalar_type() == at::kByte || image.scalar_type() == at::kFloat, "image must be uint8 or float32");
  TORCH_CHECK(!grid.is_cuda() && !image.is_cuda(), "CPU tensors expected");
  const int64_t B = image.size(0), H = image.size(2), W = image.size(3);
  at::Tensor g = grid.detach().to(at::kFloat).contiguous();
  at::Tensor dst;
  if (out.has_value() && out->defined()) {
    dst = destination(out, image, image.scalar_type());
  } else {
    // the input's layout: (B, H, W, 3) in, (B, H, W, 3) out
    const bool hwc = image.stride(1) == 1 && image.stride(3) == 3;
    dst = hwc ? at::empty({B, H, W, 3}, image.options()).permute({0, 3, 1, 2}) : at::empty({B, 3, H, W}, image.options());
  }
  at::Tensor gd;
  const bool given = guide.has_value() && guide->defined();
  if (given) {
    gd = guide->detach().to(at::kFloat).contiguous();
    TORCH_CHECK(gd.dim() == 3 && gd.size(0) == B && gd.size(1) == H && gd.size(2) == W, "guide must be (B, H, W)");
  }
  auto f32 = [](const at::Tensor& t) { return t.detach().to(at::kFloat).contiguous(); };
  at::Tensor M = f32(ccm), mb = f32(ccm_bias), sh = f32(shifts), sl = f32(slopes), mx = f32(mix);
  CurveParams cp{};
  if (!given) {
    TORCH_CHECK(M.numel() == 9 && mb.numel() == 3 && mx.numel() == 3, "ccm (3, 3), ccm_bias (3), mix (3) expected");
    TORCH_CHECK(sh.dim() == 2 && sh.size(0) == 3 && sl.sizes() == sh.sizes(), "shifts and slopes must be (3, K)");
    std::copy(M.data_ptr<float>(), M.data_ptr<float>() + 9, cp.M);
    std::copy(mb.data_ptr<float>(), mb.data_ptr<float>() + 3, cp.mb);
    std::copy(mx.data_ptr<float>(), mx.data_ptr<float>() + 3, cp.mix);
    cp.mix_bias = float(mix_bias);
    cp.shifts = sh.data_ptr<float>();
    cp.slopes = sl.data_ptr<float>();
    cp.K = sh.size(1);
  }
  const int64_t D = g.size(2), Hg = g.size(3), Wg = g.size(4);
  auto run = [&](auto in_tag) {
    using in_t = decltype(in_tag);
    const in_t* ip = image.data_ptr<in_t>();
    in_t* op = dst.data_ptr<in_t>();
    const float* gp = g.data_ptr<float>();
    if (given) {
      pointwise_kernel<in_t, float, in_t, float, -1>(gp, gd.data_ptr<float>(), ip, strides_of(image), op,
                                                     strides_of(dst), nullptr, clamp_out, B, H, W, D, Hg, Wg);
    } else if (cp.K == 16) {
      pointwise_kernel<in_t, float, in_t, float, 16>(gp, nullptr, ip, strides_of(image), op, strides_of(dst), &cp,
                                                     clamp_out, B, H, W, D, Hg, Wg);
    } else {
      pointwise_kernel<in_t, float, in_t, float, 0>(gp, nullptr, ip, strides_of(image), op, strides_of(dst), &cp,
                                                    clamp_out, B, H, W, D, Hg, Wg);
    }
  };
  if (image.scalar_type() == at::kByte) {
    run(uint8_t{});
  } else {
    run(float{});
  }
  return dst;
}

// (B, 3, h, w) float32 = antialiased resize of image (B, 3, H, W), uint8 or float32, any strides,
// with precomputed weights: ymin (h,) int64, wy (h, Ky) float32, xmin (w,) int64, wx (w, Kx) float32
at::Tensor resize_forward(at::Tensor image, at::Tensor ymin, at::Tensor wy, at::Tensor xmin, at::Tensor wx) {
  TORCH_CHECK(image.dim() == 4 && image.size(1) == 3, "image must be (B, 3, H, W), got ", image.sizes());
  TORCH_CHECK(image.scalar_type() == at::kByte || image.scalar_type() == at::kFloat, "image must be uint8 or float32");
  TORCH_CHECK(!image.is_cuda(), "CPU tensors expected");
  ymin = ymin.to(at::kLong).contiguous(), xmin = xmin.to(at::kLong).contiguous();
  wy = wy.to(at::kFloat).contiguous(), wx = wx.to(at::kFloat).contiguous();
  const int64_t B = image.size(0), H = image.size(2), W = image.size(3), h = wy.size(0), w = wx.size(0);
  TORCH_CHECK(ymin.numel() == h && xmin.numel() == w, "one start index per output row / column expected");
  at::Tensor out = at::empty({B, 3, h, w}, image.options().dtype(at::kFloat));
  auto run = [&](auto tag) {
    using in_t = decltype(tag);
    resize_kernel<in_t>(image.data_ptr<in_t>(), strides_of(image), out.data_ptr<float>(), B, H, W, h, w,
                        ymin.data_ptr<int64_t>(), wy.data_ptr<float>(), wy.size(1), xmin.data_ptr<int64_t>(),
                        wx.data_ptr<float>(), wx.size(1));
  };
  if (image.scalar_type() == at::kByte) {
    run(uint8_t{});
  } else {
    run(float{});
  }
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
  m.attr("simd") = kSimd ? "avx512" : (kSimd8 ? "avx2" : "portable");  // the widest pointwise path this build has
  m.def("simd_active", []() { return simd_allowed() || simd8_allowed(); },
        "whether the pointwise pass takes a vector path (16 or 8 pixels) here (not with ATEN_CPU_CAPABILITY=default)");
  m.def("simd_path", &simd_path, "the pointwise path taken here: avx512, avx2 or portable");
  m.def("forward", &slice_apply_forward, "out = slice_apply(grid, guide, image)", py::arg("grid"), py::arg("guide"),
        py::arg("image"), py::arg("out") = py::none());
  m.def("retouch", &retouch_forward, "out = clamp(slice_apply(grid, curve_guide(image), image)): one pass, uint8 or float32",
        py::arg("grid"), py::arg("image"), py::arg("guide"), py::arg("ccm"), py::arg("ccm_bias"), py::arg("shifts"),
        py::arg("slopes"), py::arg("mix"), py::arg("mix_bias"), py::arg("clamp"), py::arg("out") = py::none());
  m.def("resize", &resize_forward, "antialiased resize with precomputed weights, uint8 or float32 in, float32 out");
  m.def("curve_guide", &curve_guide_forward, "guide = CurveGuide(image), inference only");
  m.def("backward", &slice_apply_backward, "(d_grid, d_guide, d_image) = backward(grid, guide, image, d_out)");
}
