// AVX512-VNNI kernels: vpdpbusd (u8 activations x s8 weights -> s32) register-blocked GEMM,
// channel-vectorised NHWC depthwise, pooling and SE channel scaling.
// All headers are included before the target pragma so no library code is compiled for AVX-512.
#include <immintrin.h>

#include "common.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
// GCC 12 warns spuriously about the intrinsics' internal "undefined" vectors.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace nask {
namespace avx512 {
namespace {

struct VQ {  // per-tensor vectors used by the epilogue
  __m512i zp, lo, hi, one, zero;
  __m512i rzp, rmult, rmult_odd, rlsh, rrsh, rmask, rhalf;
  explicit VQ(const RqView& q) {
    zp = _mm512_set1_epi32(q.zp);
    lo = _mm512_set1_epi32(q.lo);
    hi = _mm512_set1_epi32(q.hi);
    one = _mm512_set1_epi32(1);
    zero = _mm512_setzero_si512();
    const int32_t rr = q.res_rsh;
    rzp = _mm512_set1_epi32(q.res_zp);
    rmult = _mm512_set1_epi32(q.res_mult);
    rmult_odd = _mm512_srli_epi64(rmult, 32);
    rlsh = _mm512_set1_epi32(q.res_lsh);
    rrsh = _mm512_set1_epi32(rr);
    rmask = _mm512_set1_epi32(static_cast<int32_t>((1ll << rr) - 1));
    rhalf = _mm512_set1_epi32(static_cast<int32_t>(((1ll << rr) - 1) >> 1));
  }
};

inline __m512i srdhm_v(__m512i a, __m512i b, __m512i b_odd) {
  const __m512i nudge = _mm512_set1_epi64(1ll << 30);
  __m512i ev = _mm512_add_epi64(_mm512_mul_epi32(a, b), nudge);
  __m512i od = _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(a, 32), b_odd), nudge);
  ev = _mm512_srli_epi64(ev, 31);
  od = _mm512_slli_epi64(od, 1);
  return _mm512_mask_blend_epi32(0xAAAA, ev, od);
}

inline __m512i rdbp_v(__m512i x, __m512i rsh, __m512i rmask, __m512i rhalf, __m512i one) {
  const __m512i rem = _mm512_and_si512(x, rmask);
  const __mmask16 neg = _mm512_cmplt_epi32_mask(x, _mm512_setzero_si512());
  const __m512i thr = _mm512_mask_add_epi32(rhalf, neg, rhalf, one);
  const __m512i r = _mm512_srav_epi32(x, rsh);
  return _mm512_mask_add_epi32(r, _mm512_cmpgt_epi32_mask(rem, thr), r, one);
}

inline __m512i mulq_v(__m512i x, __m512i m, __m512i m_odd, __m512i lsh, __m512i rsh, __m512i rmask,
                      __m512i rhalf, __m512i one) {
  return rdbp_v(srdhm_v(_mm512_sllv_epi32(x, lsh), m, m_odd), rsh, rmask, rhalf, one);
}

inline __mmask16 tail_mask(int n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1); }

// Loop-invariant epilogue state, copied out of RqView into locals so that the uint8 output stores (which
// may alias anything) do not force reloads inside the row loops.
struct Epi {
  __m512i zp, lo, hi, one;
  bool any_lsh, residual, out_int32;
  const int32_t* lut32;
  __m512i rzp, rmult, rmult_odd, rlsh, rrsh, rmask, rhalf, res_sh, res_mk, res_half;
  explicit Epi(const RqView& q) {
    const VQ v(q);
    zp = v.zp;
    lo = v.lo;
    hi = v.hi;
    one = v.one;
    any_lsh = q.any_lsh;
    residual = q.residual;
    out_int32 = q.out_int32;
    lut32 = q.lut32;
    rzp = v.rzp;
    rmult = v.rmult;
    rmult_odd = v.rmult_odd;
    rlsh = v.rlsh;
    rrsh = v.rrsh;
    rmask = v.rmask;
    rhalf = v.rhalf;
    res_sh = _mm512_set1_epi32(kResidualBits);
    res_mk = _mm512_set1_epi32((1 << kResidualBits) - 1);
    res_half = _mm512_srli_epi32(res_mk, 1);
  }
};

struct Chan {  // per-channel requantization vectors for channels c..c+15
  __m512i bias, mult, mult_odd, lsh, rsh, rmask, rhalf;
  Chan(const RqView& q, int c) {
    bias = _mm512_loadu_si512(q.bias + c);
    mult = _mm512_loadu_si512(q.mult + c);
    mult_odd = _mm512_srli_epi64(mult, 32);
    lsh = _mm512_loadu_si512(q.lsh + c);
    rsh = _mm512_loadu_si512(q.rsh + c);
    rmask = _mm512_loadu_si512(q.rmask + c);
    rhalf = _mm512_loadu_si512(q.rhalf + c);
  }
};

// Requantize 16 int32 accumulators and store (masked) to out.
inline void epi_store(__m512i acc, const Epi& e, const Chan& ch, __mmask16 m, void* out, const uint8_t* res) {
  acc = _mm512_add_epi32(acc, ch.bias);
  if (e.out_int32) {
    _mm512_mask_storeu_epi32(out, m, acc);
    return;
  }
  if (e.any_lsh) acc = _mm512_sllv_epi32(acc, ch.lsh);
  __m512i y = rdbp_v(srdhm_v(acc, ch.mult, ch.mult_odd), ch.rsh, ch.rmask, ch.rhalf, e.one);
  if (e.residual) {
    const __m512i r = _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, res)), e.rzp);
    y = _mm512_add_epi32(y, mulq_v(r, e.rmult, e.rmult_odd, e.rlsh, e.rrsh, e.rmask, e.rhalf, e.one));
    y = rdbp_v(y, e.res_sh, e.res_mk, e.res_half, e.one);
  }
  y = _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(y, e.zp), e.lo), e.hi);
  if (e.lut32) y = _mm512_i32gather_epi32(y, e.lut32, 4);
  const __m128i b = _mm512_cvtepi32_epi8(y);
  if (m == 0xFFFF) {
    _mm_storeu_si128(static_cast<__m128i*>(out), b);
  } else {
    _mm_mask_storeu_epi8(out, m, b);
  }
}

inline void epilogue(__m512i acc, const RqView& q, const VQ&, int c, __mmask16 m, void* out, const uint8_t* res) {
  const Epi e(q);
  epi_store(acc, e, Chan(q, c), m, out, res);
}

inline int32_t load4(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

inline int32_t load_partial(const uint8_t* p, int n) {
  int32_t v = 0;
  std::memcpy(&v, p, static_cast<size_t>(n));
  return v;
}

struct Int4Consts {
  __m512i shift, mask, lut;
  Int4Consts() {
    shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
    mask = _mm512_set1_epi8(0x0F);
    lut = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1));
  }
};

template <bool INT4>
inline __m512i load_w(const uint8_t* p, const Int4Consts& c4) {
  if (INT4) {
    __m512i raw = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    raw = _mm512_and_si512(_mm512_srlv_epi16(raw, c4.shift), c4.mask);
    return _mm512_shuffle_epi8(c4.lut, raw);
  }
  return _mm512_loadu_si512(p);
}

// acc[r][j] += sum over k-steps [s0, s1) of x[r, 4s:4s+4] . w[j-th 16-channel vector, step s]
template <int MR, int NC, bool INT4>
inline void dot_steps(const uint8_t* const* xr, int s0, int s1, int k, const uint8_t* wp, int64_t pstride,
                      __m512i (&acc)[MR][NC], const Int4Consts& c4) {
  constexpr int WB = INT4 ? 32 : 64;
  const int sfull = s1 < k / 4 ? s1 : k / 4;
  for (int s = s0; s < sfull; ++s) {
    __m512i w[NC];
#pragma GCC unroll 4
    for (int j = 0; j < NC; ++j) w[j] = load_w<INT4>(wp + j * pstride + s * WB, c4);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512i b = _mm512_set1_epi32(load4(xr[r] + 4 * s));
#pragma GCC unroll 4
      for (int j = 0; j < NC; ++j) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], b, w[j]);
    }
  }
  if (sfull < s1) {  // last, partial k-step (K % 4 != 0); packed weights are zero there
    const int s = sfull;
    __m512i w[NC];
    for (int j = 0; j < NC; ++j) w[j] = load_w<INT4>(wp + j * pstride + s * WB, c4);
    for (int r = 0; r < MR; ++r) {
      const __m512i b = _mm512_set1_epi32(load_partial(xr[r] + 4 * s, k - 4 * s));
      for (int j = 0; j < NC; ++j) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], b, w[j]);
    }
  }
}

template <int MR, int NC, bool INT4, bool GROUPED>
void tile(const GemmArgs& a, const VQ& vq, int row0, int vec0) {
  const PackedWeights& pw = *a.w;
  const int k = pw.k, k4 = (k + 3) / 4;
  const int64_t pstride = static_cast<int64_t>(k4) * (INT4 ? 32 : 64);
  const uint8_t* wp = pw.w.ptr + vec0 * pstride;
  const uint8_t* xr[MR];
  for (int r = 0; r < MR; ++r) {
    const int row = row0 + r < a.m ? row0 + r : a.m - 1;  // clamp: extra rows computed, not stored
    xr[r] = a.x + row * a.ldx;
  }
  const Int4Consts c4;
  __m512i acc[MR][NC];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NC; ++j) acc[r][j] = _mm512_setzero_si512();
  if (GROUPED) {
    const int gs = pw.group / 4;
    const int32_t* subs = reinterpret_cast<const int32_t*>(pw.subs.ptr);
    for (int g = 0; g < pw.ngroups; ++g) {
      __m512i part[MR][NC];
      for (int r = 0; r < MR; ++r)
        for (int j = 0; j < NC; ++j) part[r][j] = _mm512_setzero_si512();
      const int s1 = (g + 1) * gs < k4 ? (g + 1) * gs : k4;
      dot_steps<MR, NC, INT4>(xr, g * gs, s1, k, wp, pstride, part, c4);
      for (int j = 0; j < NC; ++j) {
        const __m512i sub = _mm512_loadu_si512(subs + (static_cast<int64_t>(vec0 + j) * pw.ngroups + g) * 16);
        for (int r = 0; r < MR; ++r) acc[r][j] = _mm512_add_epi32(acc[r][j], _mm512_mullo_epi32(part[r][j], sub));
      }
    }
  } else {
    dot_steps<MR, NC, INT4>(xr, 0, k4, k, wp, pstride, acc, c4);
  }
  const Epi e(a.q);
  const int esz = e.out_int32 ? 4 : 1;
  for (int j = 0; j < NC; ++j) {
    const int c = (vec0 + j) * 16;
    const Chan ch(a.q, c);
    const __mmask16 m = tail_mask(pw.n - c);
    for (int r = 0; r < MR; ++r) {
      const int row = row0 + r;
      if (row >= a.m) break;
      uint8_t* o = static_cast<uint8_t*>(a.out) + (row * a.ldo + c) * esz;
      epi_store(acc[r][j], e, ch, m, o, a.res ? a.res + row * a.ldr + c : nullptr);
    }
  }
}

template <int MR, bool INT4, bool GROUPED>
void gemm_impl(const GemmArgs& a, int threads) {
  constexpr int NCMAX = GROUPED ? 2 : 4;
  constexpr int MB = 8;  // row tiles per cache block
  const int nvec = (a.w->n + 15) / 16;
  const int ncg = (nvec + NCMAX - 1) / NCMAX;
  const int mtiles = (a.m + MR - 1) / MR;
  const int nmb = (mtiles + MB - 1) / MB;
  const VQ vq(a.q);
  par(threads, nmb * ncg, [&](int t0, int t1) {
    for (int t = t0; t < t1; ++t) {
      const int mb = t / ncg, cg = t % ncg;
      const int vec0 = cg * NCMAX;
      const int nc = nvec - vec0 < NCMAX ? nvec - vec0 : NCMAX;
      const int mt1 = (mb + 1) * MB < mtiles ? (mb + 1) * MB : mtiles;
      for (int mt = mb * MB; mt < mt1; ++mt) {
        const int row0 = mt * MR;
        switch (nc) {
          case 1: tile<MR, 1, INT4, GROUPED>(a, vq, row0, vec0); break;
          case 2: tile<MR, 2, INT4, GROUPED>(a, vq, row0, vec0); break;
          case 3: if constexpr (NCMAX >= 3) tile<MR, 3, INT4, GROUPED>(a, vq, row0, vec0); break;
          default: if constexpr (NCMAX >= 4) tile<MR, 4, INT4, GROUPED>(a, vq, row0, vec0); break;
        }
      }
    }
  });
}

}  // namespace

void gemm(const GemmArgs& a, int threads) {
  const bool int4 = a.w->bits == 4;
  if (a.w->grouped) {
    if (int4) gemm_impl<4, true, true>(a, threads);
    else gemm_impl<4, false, true>(a, threads);
  } else {
    if (int4) gemm_impl<5, true, false>(a, threads);
    else gemm_impl<6, false, false>(a, threads);
  }
}

namespace {

// Depthwise accumulation with vpdpwssd on (u8 zero-extended to s32 lanes) x (w as low s16 of s32 lanes).
// acc starts at -in_zp * sum(w); padded taps contribute in_zp * w, so every output sees the full window.
// Interior pixels: PX adjacent outputs x NV channel vectors (independent chains, weights shared).
template <int PX, int NV>
inline void dw_interior(const DwArgs& a, const VQ& vq, int b, int oy, int ox, int c0) {
  const int pad = a.k / 2;
  __m512i acc[PX][NV];
  for (int p = 0; p < PX; ++p)
    for (int v = 0; v < NV; ++v) acc[p][v] = _mm512_loadu_si512(a.neg_wzp + c0 + 16 * v);
  for (int ky = 0; ky < a.k; ++ky) {
    const int iy = oy * a.stride - pad + ky;
    const uint8_t* xrow = a.x + ((static_cast<int64_t>(b) * a.h + iy) * a.w + ox * a.stride - pad) * a.c + c0;
    const int32_t* wrow = a.wt + ky * a.k * a.cpad + c0;
    for (int kx = 0; kx < a.k; ++kx) {
      __m512i w[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) w[v] = _mm512_loadu_si512(wrow + kx * a.cpad + 16 * v);
#pragma GCC unroll 4
      for (int p = 0; p < PX; ++p) {
        const uint8_t* xp = xrow + (p * a.stride + kx) * a.c;
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
          const __m512i xv = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xp + 16 * v)));
          acc[p][v] = _mm512_dpwssd_epi32(acc[p][v], xv, w[v]);
        }
      }
    }
  }
  const Epi e(a.q);
  for (int v = 0; v < NV; ++v) {
    const Chan ch(a.q, c0 + 16 * v);
    for (int p = 0; p < PX; ++p) {
      uint8_t* o = a.out + ((static_cast<int64_t>(b) * a.ho + oy) * a.wo + ox + p) * a.c + c0 + 16 * v;
      epi_store(acc[p][v], e, ch, 0xFFFF, o, nullptr);
    }
  }
}

// Any pixel (border and/or channel tail): NV channel vectors from c0, the last one masked by `last`;
// padded taps use in_zp (they cancel against the -in_zp * sum(w) start value).
template <int NV>
inline void dw_pixel(const DwArgs& a, const Epi& e, int b, int oy, int ox, int c0, __mmask16 last) {
  const int pad = a.k / 2;
  const __m512i zpv = _mm512_set1_epi32(a.in_zp);
  __m512i acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = _mm512_loadu_si512(a.neg_wzp + c0 + 16 * v);
  for (int ky = 0; ky < a.k; ++ky) {
    const int iy = oy * a.stride - pad + ky;
    const bool row_ok = iy >= 0 && iy < a.h;
    for (int kx = 0; kx < a.k; ++kx) {
      const int ix = ox * a.stride - pad + kx;
      const int32_t* wp = a.wt + (ky * a.k + kx) * a.cpad + c0;
      if (row_ok && ix >= 0 && ix < a.w) {
        const uint8_t* p = a.x + ((static_cast<int64_t>(b) * a.h + iy) * a.w + ix) * a.c + c0;
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
          const __m128i raw = v + 1 < NV ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * v))
                                         : _mm_maskz_loadu_epi8(last, p + 16 * v);
          acc[v] = _mm512_dpwssd_epi32(acc[v], _mm512_cvtepu8_epi32(raw), _mm512_loadu_si512(wp + 16 * v));
        }
      } else {
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[v] = _mm512_dpwssd_epi32(acc[v], zpv, _mm512_loadu_si512(wp + 16 * v));
      }
    }
  }
  uint8_t* o = a.out + ((static_cast<int64_t>(b) * a.ho + oy) * a.wo + ox) * a.c + c0;
  for (int v = 0; v < NV; ++v) epi_store(acc[v], e, Chan(a.q, c0 + 16 * v), v + 1 < NV ? 0xFFFF : last, o + 16 * v,
                                         nullptr);
}

// Channels [c_begin, C) of one pixel through dw_pixel, up to 4 vectors at a time.
inline void dw_pixel_all(const DwArgs& a, const Epi& e, int b, int oy, int ox, int c_begin) {
  for (int c = c_begin; c < a.c; c += 64) {
    const int n = a.c - c < 64 ? a.c - c : 64;
    const int nv = (n + 15) / 16;
    const __mmask16 last = tail_mask(n - 16 * (nv - 1));
    switch (nv) {
      case 1: dw_pixel<1>(a, e, b, oy, ox, c, last); break;
      case 2: dw_pixel<2>(a, e, b, oy, ox, c, last); break;
      case 3: dw_pixel<3>(a, e, b, oy, ox, c, last); break;
      default: dw_pixel<4>(a, e, b, oy, ox, c, last); break;
    }
  }
}

template <int PX>
inline void dw_channels(const DwArgs& a, const VQ& vq, int b, int oy, int ox, int cfull) {
  int c = 0;
  for (; c + 64 <= cfull; c += 64) dw_interior<PX, 4>(a, vq, b, oy, ox, c);
  switch ((cfull - c) / 16) {
    case 3: dw_interior<PX, 3>(a, vq, b, oy, ox, c); break;
    case 2: dw_interior<PX, 2>(a, vq, b, oy, ox, c); break;
    case 1: dw_interior<PX, 1>(a, vq, b, oy, ox, c); break;
    default: break;
  }
}

}  // namespace

void depthwise(const DwArgs& a, int threads) {
  const int pad = a.k / 2;
  const VQ vq(a.q);
  const Epi e(a.q);
  const int cfull = a.c / 16 * 16;
  // interior output columns: the whole window lies inside the input
  const int ox_lo = (pad + a.stride - 1) / a.stride;
  int ox_hi = (a.w - a.k + pad) / a.stride + 1;  // exclusive
  if (a.w - a.k + pad < 0) ox_hi = 0;
  par(threads, a.batch * a.ho, [&](int r0, int r1) {
    for (int r = r0; r < r1; ++r) {
      const int b = r / a.ho, oy = r % a.ho;
      const int iy0 = oy * a.stride - pad;
      const bool row_inside = iy0 >= 0 && iy0 + a.k <= a.h;
      int ox = 0;
      while (ox < a.wo) {
        const bool inside = row_inside && ox >= ox_lo && ox < ox_hi;
        if (inside && ox + 1 < ox_hi) {
          dw_channels<2>(a, vq, b, oy, ox, cfull);
          if (cfull < a.c) {
            dw_pixel_all(a, e, b, oy, ox, cfull);
            dw_pixel_all(a, e, b, oy, ox + 1, cfull);
          }
          ox += 2;
        } else {
          if (inside) dw_channels<1>(a, vq, b, oy, ox, cfull);
          dw_pixel_all(a, e, b, oy, ox, inside ? cfull : 0);
          ox += 1;
        }
      }
    }
  });
}

void pool(const PoolArgs& a, int threads) {
  const int ncb = (a.c + 15) / 16;
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i mult = _mm512_set1_epi32(a.mult);
  const __m512i mult_odd = _mm512_srli_epi64(mult, 32);
  const __m512i lsh = _mm512_set1_epi32(a.lsh), rsh = _mm512_set1_epi32(a.rsh);
  const __m512i rmask = _mm512_set1_epi32(static_cast<int32_t>((1ll << a.rsh) - 1));
  const __m512i rhalf = _mm512_srli_epi32(rmask, 1);
  par(threads, a.batch * ncb, [&](int t0, int t1) {
    for (int t = t0; t < t1; ++t) {
      const int b = t / ncb, c = (t % ncb) * 16;
      const __mmask16 m = tail_mask(a.c - c);
      const uint8_t* x = a.x + static_cast<int64_t>(b) * a.hw * a.c + c;
      __m512i s = _mm512_setzero_si512();
      for (int p = 0; p < a.hw; ++p)
        s = _mm512_add_epi32(s, _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, x + static_cast<int64_t>(p) * a.c)));
      s = _mm512_sub_epi32(s, _mm512_set1_epi32(a.hw * a.in_zp));
      __m512i y = mulq_v(s, mult, mult_odd, lsh, rsh, rmask, rhalf, one);
      y = _mm512_add_epi32(y, _mm512_set1_epi32(a.out_zp));
      y = _mm512_min_epi32(_mm512_max_epi32(y, _mm512_setzero_si512()), _mm512_set1_epi32(255));
      _mm_mask_storeu_epi8(a.out + b * a.c + c, m, _mm512_cvtepi32_epi8(y));
    }
  });
}

void channel_scale(const ScaleArgs& a, int threads) {
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i mult = _mm512_set1_epi32(a.mult);
  const __m512i mult_odd = _mm512_srli_epi64(mult, 32);
  const __m512i lsh = _mm512_set1_epi32(a.lsh), rsh = _mm512_set1_epi32(a.rsh);
  const __m512i rmask = _mm512_set1_epi32(static_cast<int32_t>((1ll << a.rsh) - 1));
  const __m512i rhalf = _mm512_srli_epi32(rmask, 1);
  const __m512i zpv = _mm512_set1_epi32(a.in_zp), ozp = _mm512_set1_epi32(a.out_zp);
  const __m512i v255 = _mm512_set1_epi32(255);
  par(threads, a.batch * a.hw, [&](int p0, int p1) {
    for (int p = p0; p < p1; ++p) {
      const int b = p / a.hw;
      const uint8_t* x = a.x + static_cast<int64_t>(p) * a.c;
      const uint8_t* g = a.gate + static_cast<int64_t>(b) * a.c;
      uint8_t* o = a.out + static_cast<int64_t>(p) * a.c;
      for (int c = 0; c < a.c; c += 16) {
        const __mmask16 m = tail_mask(a.c - c);
        const __m512i xv = _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, x + c)), zpv);
        const __m512i gv = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, g + c));
        __m512i y = mulq_v(_mm512_madd_epi16(xv, gv), mult, mult_odd, lsh, rsh, rmask, rhalf, one);
        y = _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(y, ozp), _mm512_setzero_si512()), v255);
        _mm_mask_storeu_epi8(o + c, m, _mm512_cvtepi32_epi8(y));
      }
    }
  });
}

int64_t vnni_loop(int64_t iters) {
  __m512i acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_epi32(i);
  const __m512i a = _mm512_set1_epi8(1), b = _mm512_set1_epi8(2);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
    __asm__ volatile("" : "+v"(acc[0]), "+v"(acc[1]), "+v"(acc[2]), "+v"(acc[3]), "+v"(acc[4]), "+v"(acc[5]),
                     "+v"(acc[6]), "+v"(acc[7]), "+v"(acc[8]), "+v"(acc[9]), "+v"(acc[10]), "+v"(acc[11]));
  }
  __m512i s = acc[0];
  for (int i = 1; i < 12; ++i) s = _mm512_add_epi32(s, acc[i]);
  return _mm512_reduce_add_epi32(s);
}

}  // namespace avx512
}  // namespace nask

#pragma GCC pop_options
