// AArch64 NEON kernels, ARMv8.0 baseline ("neon"): GEMM on int8 x int8 products widened by smull/smlal and
// summed into int32 by sadalp; channel-vectorised NHWC depthwise (int16 taps, smlal), pool and SE scaling.
// The shared parts (activation shift, epilogue, tiling) are in neon.h. Compiles to nothing off AArch64.
#if defined(__aarch64__)
#include "neon.h"

namespace nask {
namespace {

// sums[r][j] = dot products of steps [s0, s1) for channels 4j..4j+3 of row r. Two steps of int8 products are
// summed in int16 (|2 * 128 * 127| < 2^15), then sadalp adds pairs into int32: lane pairs (channel 4j, 4j + 1)
// from the low halves, (4j + 2, 4j + 3) from the high halves, joined by addp at the end.
struct MlalSteps {
  template <int MR, bool INT4>
  static inline void run(const int8_t* xs, int kp, int s0, int s1, const uint8_t* wp, int32x4_t (&sums)[MR][4]) {
    constexpr int WB = kStepBytes<INT4>;
    int32x4_t acc[MR][8];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) acc[r][j] = vdupq_n_s32(0);
    int s = s0;
    for (; s + 2 <= s1; s += 2) {
      int8x16_t w0[4], w1[4];
      load_w<INT4>(wp + s * WB, w0);
      load_w<INT4>(wp + (s + 1) * WB, w1);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const int8x16_t x0 = dup4(xs + r * kp + 4 * s), x1 = dup4(xs + r * kp + 4 * s + 4);
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
          int16x8_t lo = vmull_s8(vget_low_s8(w0[j]), vget_low_s8(x0));
          int16x8_t hi = vmull_high_s8(w0[j], x0);
          lo = vmlal_s8(lo, vget_low_s8(w1[j]), vget_low_s8(x1));
          hi = vmlal_high_s8(hi, w1[j], x1);
          acc[r][2 * j] = vpadalq_s16(acc[r][2 * j], lo);
          acc[r][2 * j + 1] = vpadalq_s16(acc[r][2 * j + 1], hi);
        }
      }
    }
    if (s < s1) {
      int8x16_t w0[4];
      load_w<INT4>(wp + s * WB, w0);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const int8x16_t x0 = dup4(xs + r * kp + 4 * s);
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
          acc[r][2 * j] = vpadalq_s16(acc[r][2 * j], vmull_s8(vget_low_s8(w0[j]), vget_low_s8(x0)));
          acc[r][2 * j + 1] = vpadalq_s16(acc[r][2 * j + 1], vmull_high_s8(w0[j], x0));
        }
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) sums[r][j] = vpaddq_s32(acc[r][2 * j], acc[r][2 * j + 1]);
  }
};

}  // namespace

namespace neon {

void gemm(const GemmArgs& a, int threads) {
  const bool int4 = a.w->bits == 4;
  if (a.w->grouped) gemm_impl<MlalSteps, 2, true, true>(a, threads);
  else if (int4) gemm_impl<MlalSteps, 2, true, false>(a, threads);
  else gemm_impl<MlalSteps, 2, false, false>(a, threads);
}

void depthwise(const DwArgs& a, int threads) {
  const int pad = a.k / 2;
  const int16_t* taps = reinterpret_cast<const int16_t*>(a.dw_w);  // [k * k][cpad] (pack_dw_taps16)
  const Lut lut = make_lut(a.q.lut32);
  const uint8x8_t zp = vdup_n_u8(static_cast<uint8_t>(a.in_zp));
  const int rows = dw_rows(a);
  par(threads, a.batch * rows, [&](int r0, int r1) {
    for (int r = r0; r < r1; ++r) {
      const int b = r / rows, oy = a.oy0 + r % rows;
      const int iy0 = oy * a.stride - pad;
      const int ky0 = iy0 < 0 ? -iy0 : 0;
      const int ky1 = a.h - iy0 < a.k ? a.h - iy0 : a.k;
      for (int ox = 0; ox < a.wo; ++ox) {
        const int ix0 = ox * a.stride - pad;
        const int kx0 = ix0 < 0 ? -ix0 : 0;
        const int kx1 = a.w - ix0 < a.k ? a.w - ix0 : a.k;
        uint8_t* o = dw_out_row(a, b, oy) + static_cast<int64_t>(ox) * a.c;
        for (int c = 0; c < a.c; c += 16) {
          const int n = a.c - c < 16 ? a.c - c : 16;
          int32x4_t acc[4] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
          for (int ky = ky0; ky < ky1; ++ky) {
            const uint8_t* xrow = dw_in_row(a, b, iy0 + ky) + static_cast<int64_t>(ix0) * a.c + c;
            const int16_t* wrow = taps + ky * a.k * a.cpad + c;
            for (int kx = kx0; kx < kx1; ++kx) {
              const uint8x16_t xv = load16(xrow + kx * a.c, n);
              // x - in_zp in [-255, 255]: the uint16 difference read as int16
              const int16x8_t d0 = vreinterpretq_s16_u16(vsubl_u8(vget_low_u8(xv), zp));
              const int16x8_t d1 = vreinterpretq_s16_u16(vsubl_high_u8(xv, vcombine_u8(zp, zp)));
              const int16x8_t w0 = vld1q_s16(wrow + kx * a.cpad), w1 = vld1q_s16(wrow + kx * a.cpad + 8);
              acc[0] = vmlal_s16(acc[0], vget_low_s16(d0), vget_low_s16(w0));
              acc[1] = vmlal_high_s16(acc[1], d0, w0);
              acc[2] = vmlal_s16(acc[2], vget_low_s16(d1), vget_low_s16(w1));
              acc[3] = vmlal_high_s16(acc[3], d1, w1);
            }
          }
          epilogue16(acc, a.q, lut, c, n, o + c, nullptr);
        }
      }
    }
  });
}

void pool(const PoolArgs& a, int threads) {
  const int ncb = (a.c + 15) / 16;
  par(threads, a.batch * ncb, [&](int t0, int t1) {
    for (int t = t0; t < t1; ++t) {
      const int b = t / ncb, c = (t % ncb) * 16;
      const int n = a.c - c < 16 ? a.c - c : 16;
      const uint8_t* x = a.x + static_cast<int64_t>(b) * a.hw * a.c + c;
      uint32x4_t s[4] = {vdupq_n_u32(0), vdupq_n_u32(0), vdupq_n_u32(0), vdupq_n_u32(0)};
      for (int p0 = 0; p0 < a.hw; p0 += 256) {  // 256 bytes fit a uint16 sum
        const int p1 = a.hw - p0 < 256 ? a.hw : p0 + 256;
        uint16x8_t lo = vdupq_n_u16(0), hi = vdupq_n_u16(0);
        for (int p = p0; p < p1; ++p) {
          const uint8x16_t v = load16(x + static_cast<int64_t>(p) * a.c, n);
          lo = vaddw_u8(lo, vget_low_u8(v));
          hi = vaddw_high_u8(hi, v);
        }
        s[0] = vaddw_u16(s[0], vget_low_u16(lo));
        s[1] = vaddw_high_u16(s[1], lo);
        s[2] = vaddw_u16(s[2], vget_low_u16(hi));
        s[3] = vaddw_high_u16(s[3], hi);
      }
      const int32x4_t off = vdupq_n_s32(a.hw * a.in_zp);
      int32x4_t v[4];
      for (int i = 0; i < 4; ++i) v[i] = vsubq_s32(vreinterpretq_s32_u32(s[i]), off);
      store16(a.out + b * a.c + c, scale_round16(v, a.scale, a.out_zp), n);
    }
  });
}

void channel_scale(const ScaleArgs& a, int threads) {
  par(threads, a.batch * a.hw, [&](int p0, int p1) {
    const uint8x8_t zp = vdup_n_u8(static_cast<uint8_t>(a.in_zp));
    for (int p = p0; p < p1; ++p) {
      const int b = p / a.hw;
      const uint8_t* x = a.x + static_cast<int64_t>(p) * a.c;
      const uint8_t* g = a.gate + static_cast<int64_t>(b) * a.c;
      uint8_t* o = a.out + static_cast<int64_t>(p) * a.c;
      for (int c = 0; c < a.c; c += 16) {
        const int n = a.c - c < 16 ? a.c - c : 16;
        const uint8x16_t xv = load16(x + c, n), gv = load16(g + c, n);
        // (x - in_zp) in [-255, 255] times the gate in [0, 255]: int16 x int16 -> int32
        const int16x8_t d0 = vreinterpretq_s16_u16(vsubl_u8(vget_low_u8(xv), zp));
        const int16x8_t d1 = vreinterpretq_s16_u16(vsubl_high_u8(xv, vcombine_u8(zp, zp)));
        const int16x8_t g0 = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(gv)));
        const int16x8_t g1 = vreinterpretq_s16_u16(vmovl_high_u8(gv));
        const int32x4_t v[4] = {vmull_s16(vget_low_s16(d0), vget_low_s16(g0)), vmull_high_s16(d0, g0),
                                vmull_s16(vget_low_s16(d1), vget_low_s16(g1)), vmull_high_s16(d1, g1)};
        store16(o + c, scale_round16(v, a.scale, a.out_zp), n);
      }
    }
  });
}

// Training (float32) has no NEON path yet: the portable loop.
void dw_weight_grad(const DwGradArgs& a, int threads) { ref::dw_weight_grad(a, threads); }

}  // namespace neon
}  // namespace nask

#endif  // __aarch64__
