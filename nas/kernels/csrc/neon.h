// Shared parts of the AArch64 NEON kernels (neon.cpp: ARMv8.0 baseline; neon_dot.cpp: ARMv8.2 dot product).
// Everything here has internal linkage (anonymous namespace): each including file compiles its own copy for its
// target, so no inline function built with the dot-product target can be picked by the linker for the baseline.
//
// GEMM: weights in the 16x4 layout plus a per-channel correction (pack_gemm_16x4_s8, pack.h). Activations are
// shifted into int8, x' = x - 128 (x ^ 0x80), so both kernels multiply int8 by int8; the packer folds the 128 *
// sum_k w[c, k] that the shift removes into the correction (exact int32 arithmetic, modulo 2^32 like the rest).
// Epilogue: the documented float32 requantization (common.h), one IEEE multiply and add per value (the file must
// be compiled with -ffp-contract=off: GCC's arm_neon.h writes vmulq_f32 as a * b, which it would otherwise fuse
// into fmla), clamp in float, then vcvtnq_s32_f32 (round to nearest, ties to even).
#pragma once

#if defined(__aarch64__)
#include <arm_neon.h>

#include "common.h"

namespace nask {
namespace {

constexpr int kRowBlock = 8;  // register tiles of rows whose packed activations are shared by the column blocks

// The uint8 activation table (RqView::lut32 holds 256 values in [0, 255]) as four 64-byte tbl tables.
struct Lut {
  uint8x16x4_t t[4];
  bool on = false;
};

inline Lut make_lut(const int32_t* lut32) {
  Lut l;
  if (!lut32) return l;
  uint8_t b[256];
  for (int i = 0; i < 256; ++i) b[i] = static_cast<uint8_t>(lut32[i]);
  for (int i = 0; i < 4; ++i) l.t[i] = vld1q_u8_x4(b + 64 * i);
  l.on = true;
  return l;
}

// tbl returns 0 for an index past its 64 bytes, so exactly one of the four lookups hits.
inline uint8x16_t lookup(const Lut& l, uint8x16_t i) {
  const uint8x16_t step = vdupq_n_u8(64);
  uint8x16_t r = vqtbl4q_u8(l.t[0], i);
  i = vsubq_u8(i, step);
  r = vorrq_u8(r, vqtbl4q_u8(l.t[1], i));
  i = vsubq_u8(i, step);
  r = vorrq_u8(r, vqtbl4q_u8(l.t[2], i));
  i = vsubq_u8(i, step);
  return vorrq_u8(r, vqtbl4q_u8(l.t[3], i));
}

inline uint8x16_t load16(const uint8_t* p, int n) {  // n < 16: the rest zero (the channel tail)
  if (n >= 16) return vld1q_u8(p);
  uint8_t tmp[16] = {};
  std::memcpy(tmp, p, static_cast<size_t>(n));
  return vld1q_u8(tmp);
}

inline void store16(uint8_t* p, uint8x16_t v, int n) {
  if (n >= 16) {
    vst1q_u8(p, v);
    return;
  }
  uint8_t tmp[16];
  vst1q_u8(tmp, v);
  std::memcpy(p, tmp, static_cast<size_t>(n));
}

// The four int32 lanes groups of 16 bytes.
inline void widen16(uint8x16_t v, int32x4_t (&o)[4]) {
  const uint16x8_t lo = vmovl_u8(vget_low_u8(v)), hi = vmovl_high_u8(v);
  o[0] = vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(lo)));
  o[1] = vreinterpretq_s32_u32(vmovl_high_u16(lo));
  o[2] = vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(hi)));
  o[3] = vreinterpretq_s32_u32(vmovl_high_u16(hi));
}

// 16 int32 values already in [0, 255] -> bytes.
inline uint8x16_t narrow16(const int32x4_t (&y)[4]) {
  const int16x8_t a = vcombine_s16(vqmovn_s32(y[0]), vqmovn_s32(y[1]));
  const int16x8_t b = vcombine_s16(vqmovn_s32(y[2]), vqmovn_s32(y[3]));
  return vcombine_u8(vqmovun_s16(a), vqmovun_s16(b));
}

// rne(clamp(v, lo, hi)) + zp: the scalar form's clamp, then round to nearest even.
inline int32x4_t round_clamp(float32x4_t v, float32x4_t lo, float32x4_t hi, int32x4_t zp) {
  return vaddq_s32(vcvtnq_s32_f32(vminq_f32(vmaxq_f32(v, lo), hi)), zp);
}

// Requantizes the 16 accumulators (bias not yet added) of channels c..c+15 (n valid) of one row and stores them
// (rq_apply in common.h, lane by lane). res: the row's residual input at channel c, or nullptr.
inline void epilogue16(const int32x4_t (&acc)[4], const RqView& q, const Lut& lut, int c, int n, void* out,
                       const uint8_t* res) {
  int32x4_t a[4];
  for (int i = 0; i < 4; ++i) a[i] = vaddq_s32(acc[i], vld1q_s32(q.bias + c + 4 * i));
  if (q.out_int32) {
    int32_t tmp[16];
    for (int i = 0; i < 4; ++i) vst1q_s32(tmp + 4 * i, a[i]);
    std::memcpy(out, tmp, static_cast<size_t>(n < 16 ? n : 16) * 4);
    return;
  }
  float32x4_t v[4];
  for (int i = 0; i < 4; ++i) v[i] = vmulq_f32(vcvtq_f32_s32(a[i]), vld1q_f32(q.scale + c + 4 * i));
  if (q.residual) {
    int32x4_t r[4];
    widen16(load16(res, n), r);
    const int32x4_t rzp = vdupq_n_s32(q.res_zp);
    const float32x4_t rs = vdupq_n_f32(q.res_scale);
    for (int i = 0; i < 4; ++i) v[i] = vaddq_f32(v[i], vmulq_f32(vcvtq_f32_s32(vsubq_s32(r[i], rzp)), rs));
  }
  const float32x4_t lo = vdupq_n_f32(q.flo), hi = vdupq_n_f32(q.fhi);
  const int32x4_t zp = vdupq_n_s32(q.zp);
  int32x4_t y[4];
  for (int i = 0; i < 4; ++i) y[i] = round_clamp(v[i], lo, hi, zp);
  uint8x16_t b = narrow16(y);
  if (lut.on) b = lookup(lut, b);
  store16(static_cast<uint8_t*>(out), b, n);
}

// rne(clamp(float32(v) * scale, -zp, 255 - zp)) + zp for 16 values (pool and SE scaling), as bytes.
inline uint8x16_t scale_round16(const int32x4_t (&v)[4], float scale, int32_t zp) {
  const float32x4_t s = vdupq_n_f32(scale);
  const float32x4_t lo = vdupq_n_f32(static_cast<float>(-zp)), hi = vdupq_n_f32(static_cast<float>(255 - zp));
  const int32x4_t z = vdupq_n_s32(zp);
  int32x4_t y[4];
  for (int i = 0; i < 4; ++i) y[i] = round_clamp(vmulq_f32(vcvtq_f32_s32(v[i]), s), lo, hi, z);
  return narrow16(y);
}

// ---------------------------------------------------------------- GEMM
// Packed activations: per row, K bytes x ^ 0x80 (as int8), zero-padded to kp = round_up(K, 16) + 16 so a kernel
// may read 16 bytes at any multiple of 4 below K.
inline int packed_row_bytes(int k) { return (k + 15) / 16 * 16 + 16; }

template <int MR>
inline void pack_rows(const GemmArgs& a, int row0, int k, int kp, int8_t* xs) {
  const uint8x16_t flip = vdupq_n_u8(0x80);
  for (int r = 0; r < MR; ++r) {
    const int row = row0 + r < a.m ? row0 + r : a.m - 1;  // rows past m repeat the last one (never stored)
    const uint8_t* x = a.x + static_cast<int64_t>(row) * a.ldx;
    int8_t* d = xs + static_cast<int64_t>(r) * kp;
    int i = 0;
    for (; i + 16 <= k; i += 16) vst1q_s8(d + i, vreinterpretq_s8_u8(veorq_u8(vld1q_u8(x + i), flip)));
    for (; i < k; ++i) d[i] = static_cast<int8_t>(x[i] ^ 0x80);
    for (; i < kp; ++i) d[i] = 0;
  }
}

// Bytes of one step (4 k values of 16 channels) in the 16x4 layout.
template <bool INT4>
constexpr int kStepBytes = INT4 ? 32 : 64;

// The four weight vectors of one step: vector j = channels 4j..4j+3, 4 k values each. int4: byte i of the 32
// holds step byte i (low nibble) and i + 32 (high nibble), sign-extended by shifts.
template <bool INT4>
inline void load_w(const uint8_t* p, int8x16_t (&w)[4]) {
  if (INT4) {
    const int8x16_t b0 = vld1q_s8(reinterpret_cast<const int8_t*>(p));
    const int8x16_t b1 = vld1q_s8(reinterpret_cast<const int8_t*>(p) + 16);
    w[0] = vshrq_n_s8(vshlq_n_s8(b0, 4), 4);
    w[1] = vshrq_n_s8(vshlq_n_s8(b1, 4), 4);
    w[2] = vshrq_n_s8(b0, 4);
    w[3] = vshrq_n_s8(b1, 4);
  } else {
    for (int j = 0; j < 4; ++j) w[j] = vld1q_s8(reinterpret_cast<const int8_t*>(p) + 16 * j);
  }
}

inline int8x16_t dup4(const int8_t* p) {  // 4 bytes in every 32-bit lane
  uint32_t v;
  std::memcpy(&v, p, 4);
  return vreinterpretq_s8_u32(vdupq_n_u32(v));
}

// One register tile: MR rows x 16 channels (column block `blk`). Steps::run(xs, kp, s0, s1, wp, sums) sets
// sums[r][j] to the dot products of steps [s0, s1) (channels 4j..4j+3 of row r).
template <class Steps, int MR, bool INT4, bool GROUPED>
inline void tile(const GemmArgs& a, const int8_t* xs, int kp, int row0, int blk, const Lut& lut) {
  const PackedWeights& pw = *a.w;
  const int steps = (pw.k + 3) / 4;
  const int64_t panel = static_cast<int64_t>(steps) * kStepBytes<INT4>;
  const uint8_t* wp = pw.w.ptr + blk * panel;
  const int nblk = (pw.n + 15) / 16;
  const int32_t* corr = reinterpret_cast<const int32_t*>(pw.w.ptr + nblk * panel) + blk * 16;
  int32x4_t acc[MR][4];
  if (GROUPED) {
    const int gs = pw.group / 4;
    const int32_t* subs = pw.subs.as<int32_t>() + static_cast<int64_t>(blk) * pw.ngroups * 16;
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < 4; ++j) acc[r][j] = vdupq_n_s32(0);
    for (int g = 0; g < pw.ngroups; ++g) {
      int32x4_t part[MR][4];
      const int s1 = (g + 1) * gs < steps ? (g + 1) * gs : steps;
      Steps::template run<MR, INT4>(xs, kp, g * gs, s1, wp, part);
      for (int j = 0; j < 4; ++j) {
        const int32x4_t sub = vld1q_s32(subs + g * 16 + 4 * j);
        for (int r = 0; r < MR; ++r) acc[r][j] = vmlaq_s32(acc[r][j], part[r][j], sub);
      }
    }
  } else {
    Steps::template run<MR, INT4>(xs, kp, 0, steps, wp, acc);
  }
  const int c = blk * 16;
  const int n = pw.n - c < 16 ? pw.n - c : 16;
  const int esz = a.q.out_int32 ? 4 : 1;
  for (int r = 0; r < MR; ++r) {
    const int row = row0 + r;
    if (row >= a.m) break;
    int32x4_t t[4];
    for (int j = 0; j < 4; ++j) t[j] = vaddq_s32(acc[r][j], vld1q_s32(corr + 4 * j));
    uint8_t* o = static_cast<uint8_t*>(a.out) + (row * a.ldo + c) * esz;
    epilogue16(t, a.q, lut, c, n, o, a.res ? a.res + row * a.ldr + c : nullptr);
  }
}

// Row blocks of kRowBlock tiles x all column blocks, split over threads by (row block, column block).
template <class Steps, int MR, bool INT4, bool GROUPED>
void gemm_impl(const GemmArgs& a, int threads) {
  const int k = a.w->k, kp = packed_row_bytes(k);
  const int nblk = (a.w->n + 15) / 16;
  const int mtiles = (a.m + MR - 1) / MR;
  const int nmb = (mtiles + kRowBlock - 1) / kRowBlock;
  const Lut lut = make_lut(a.q.lut32);
  par(threads, nmb * nblk, [&](int t0, int t1) {
    int8_t* xs = new int8_t[static_cast<size_t>(MR) * kRowBlock * kp];
    int packed_mb = -1;
    for (int t = t0; t < t1; ++t) {
      const int mb = t / nblk, blk = t % nblk;
      const int mt1 = (mb + 1) * kRowBlock < mtiles ? (mb + 1) * kRowBlock : mtiles;
      if (mb != packed_mb) {
        for (int mt = mb * kRowBlock; mt < mt1; ++mt)
          pack_rows<MR>(a, mt * MR, k, kp, xs + static_cast<int64_t>(mt - mb * kRowBlock) * MR * kp);
        packed_mb = mb;
      }
      for (int mt = mb * kRowBlock; mt < mt1; ++mt)
        tile<Steps, MR, INT4, GROUPED>(a, xs + static_cast<int64_t>(mt - mb * kRowBlock) * MR * kp, kp, mt * MR,
                                       blk, lut);
    }
    delete[] xs;
  });
}

}  // namespace
}  // namespace nask

#endif  // __aarch64__
