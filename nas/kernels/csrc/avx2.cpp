// AVX2 kernels (Haswell-class, no VNNI): GEMM via vpmaddwd on u8->s16 activation pairs and
// s8->s16 weight pairs (exact, no saturation), NHWC depthwise on 16 channels with two taps per vpmaddwd, pool,
// SE scaling.
#if defined(__x86_64__) || defined(_M_X64)  // compiles to nothing on other architectures
#include <immintrin.h>

#include "common.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace nask {
namespace avx2 {
namespace {

inline __m256i bcast(int32_t v) { return _mm256_set1_epi32(v); }

inline void store8(uint8_t* out, __m256i y, int n) {
  const __m128i p16 = _mm_packs_epi32(_mm256_castsi256_si128(y), _mm256_extracti128_si256(y, 1));
  const __m128i p8 = _mm_packus_epi16(p16, p16);
  if (n >= 8) {
    _mm_storel_epi64(reinterpret_cast<__m128i*>(out), p8);
  } else {
    uint8_t tmp[16];
    _mm_storeu_si128(reinterpret_cast<__m128i*>(tmp), p8);
    std::memcpy(out, tmp, static_cast<size_t>(n));
  }
}

inline __m256i load8_u8(const uint8_t* p, int n) {
  if (n >= 8) return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  uint8_t tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int i = 0; i < n; ++i) tmp[i] = p[i];
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(tmp)));
}

// rne(clamp(v, flo, fhi)) as int32 (MXCSR default rounding: nearest even).
inline __m256i round_clamp(__m256 v, __m256 flo, __m256 fhi) {
  return _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, flo), fhi));
}
inline __m256i round_clamp(__m256 v, float flo, float fhi) {
  return round_clamp(v, _mm256_set1_ps(flo), _mm256_set1_ps(fhi));
}

// Loop-invariant epilogue state, copied out of RqView into locals so that the uint8 output stores (which may alias
// anything) do not force reloads of the view's fields after every store.
struct Epi {
  const int32_t* bias;
  const float* scale;
  const int32_t* lut32;
  __m256 flo, fhi, rscale;
  __m256i zp, rzp, zp16, lo8, hi8;
  bool residual, out_int32;
  bool packs;  // no_overflow, no LUT, uint8 output: 16 outputs at a time through saturating packs (epi16)
  explicit Epi(const RqView& q)
      : bias(q.bias), scale(q.scale), lut32(q.lut32), flo(_mm256_set1_ps(q.flo)), fhi(_mm256_set1_ps(q.fhi)),
        rscale(_mm256_set1_ps(q.res_scale)), zp(bcast(q.zp)), rzp(bcast(q.res_zp)),
        zp16(_mm256_set1_epi16(static_cast<int16_t>(q.zp))), lo8(_mm256_set1_epi8(static_cast<char>(q.lo))),
        hi8(_mm256_set1_epi8(static_cast<char>(q.hi))), residual(q.residual), out_int32(q.out_int32),
        packs(q.no_overflow && !q.lut32 && !q.out_int32) {}
};

// float32(acc + bias) * scale (+ float32(res - res_zp) * res_scale), as rq_apply rounds it; channels c..c+7.
inline __m256 rq_float(__m256i acc, const Epi& e, int c, __m256i res) {
  acc = _mm256_add_epi32(acc, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(e.bias + c)));
  __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_loadu_ps(e.scale + c));
  if (e.residual) v = _mm256_add_ps(v, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(res, e.rzp)), e.rscale));
  return v;
}

// Requantize 8 accumulators (bias not yet added) for channels c..c+7 (n valid) and store.
inline void epilogue(__m256i acc, const Epi& e, int c, int n, void* out, const uint8_t* res) {
  if (e.out_int32) {
    acc = _mm256_add_epi32(acc, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(e.bias + c)));
    int32_t tmp[8];
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(tmp), acc);
    std::memcpy(out, tmp, static_cast<size_t>(n < 8 ? n : 8) * 4);
    return;
  }
  const __m256 v = rq_float(acc, e, c, e.residual ? load8_u8(res, n) : acc);
  __m256i y = _mm256_add_epi32(round_clamp(v, e.flo, e.fhi), e.zp);
  if (e.lut32) y = _mm256_i32gather_epi32(e.lut32, y, 4);
  store8(static_cast<uint8_t*>(out), y, n);
}

// The same for 16 accumulators (channels c..c+7 in a, c+8..c+15 in b, all valid) where e.packs: rne(v) as int32,
// vpackssdw / saturating + zp / vpackuswb / byte clamp to [lo, hi] (the same bits as clamping v first, see
// RqView::no_overflow), then vpermd puts the packs' lane-interleaved dwords in channel order; one 16-byte store.
inline void epi16(__m256i a, __m256i b, const Epi& e, int c, uint8_t* out, const uint8_t* res) {
  __m256i ra = a, rb = b;
  if (e.residual) {
    const __m128i r = _mm_loadu_si128(reinterpret_cast<const __m128i*>(res));
    ra = _mm256_cvtepu8_epi32(r);
    rb = _mm256_cvtepu8_epi32(_mm_srli_si128(r, 8));
  }
  const __m256i p = _mm256_adds_epi16(
      _mm256_packs_epi32(_mm256_cvtps_epi32(rq_float(a, e, c, ra)), _mm256_cvtps_epi32(rq_float(b, e, c + 8, rb))),
      e.zp16);
  __m256i y = _mm256_min_epu8(_mm256_max_epu8(_mm256_packus_epi16(p, p), e.lo8), e.hi8);
  // dword 0 | 1 of lane 0 hold channels 0-3 | 8-11, of lane 1 (dwords 4 | 5) channels 4-7 | 12-15
  y = _mm256_permutevar8x32_epi32(y, _mm256_setr_epi32(0, 4, 1, 5, 0, 0, 0, 0));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_castsi256_si128(y));
}

// rne(clamp(float32(v) * scale, -zp, 255 - zp)) + zp
inline __m256i scale_round(__m256i v, float scale, int32_t zp) {
  const __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(scale));
  return _mm256_add_epi32(round_clamp(f, static_cast<float>(-zp), static_cast<float>(255 - zp)), bcast(zp));
}

template <bool INT4>
inline __m256i load_w(const uint8_t* p) {
  if (INT4) {
    const __m128i m = _mm_set1_epi8(0x0F);
    const __m128i lut = _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1);
    const __m128i raw = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    const __m128i v = _mm_unpacklo_epi64(_mm_and_si128(raw, m), _mm_and_si128(_mm_srli_epi16(raw, 4), m));
    return _mm256_cvtepi8_epi16(_mm_shuffle_epi8(lut, v));
  }
  return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

template <int MR, int NC, bool INT4>
inline void dot_steps(const uint16_t* xs, int k2p, int s0, int s1, const uint8_t* wp, int64_t pstride,
                      __m256i (&acc)[MR][NC]) {
  constexpr int WB = INT4 ? 8 : 16;
  for (int s = s0; s < s1; ++s) {
    __m256i w[NC];
#pragma GCC unroll 4
    for (int j = 0; j < NC; ++j) w[j] = load_w<INT4>(wp + j * pstride + s * WB);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      int32_t v;
      std::memcpy(&v, xs + r * k2p + 2 * s, 4);
      const __m256i b = _mm256_set1_epi32(v);
#pragma GCC unroll 4
      for (int j = 0; j < NC; ++j) acc[r][j] = _mm256_add_epi32(acc[r][j], _mm256_madd_epi16(b, w[j]));
    }
  }
}

// Zero-extend MR rows (clamped to the last valid row) of x into xs (u16, K rounded up to even).
template <int MR>
inline void pack_rows(const GemmArgs& a, int row0, int k, int k2p, uint16_t* xs) {
  for (int r = 0; r < MR; ++r) {
    const int row = row0 + r < a.m ? row0 + r : a.m - 1;
    const uint8_t* x = a.x + row * a.ldx;
    uint16_t* d = xs + r * k2p;
    int i = 0;
    for (; i + 16 <= k; i += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i),
                          _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))));
    for (; i < k; ++i) d[i] = x[i];
    for (; i < k2p; ++i) d[i] = 0;
  }
}

template <int MR, int NC, bool INT4, bool GROUPED>
void tile(const GemmArgs& a, const uint16_t* xs, int k2p, int row0, int vec0) {
  const PackedWeights& pw = *a.w;
  const int k2 = k2p / 2;
  const int64_t pstride = static_cast<int64_t>(k2) * (INT4 ? 8 : 16);
  const uint8_t* wp = pw.w.ptr + vec0 * pstride;
  // all loops over acc fully unrolled: a runtime index would force the accumulators to the stack
  __m256i acc[MR][NC];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < NC; ++j) acc[r][j] = _mm256_setzero_si256();
  if (GROUPED) {
    const int gs = pw.group / 2;
    const int32_t* subs = reinterpret_cast<const int32_t*>(pw.subs.ptr);
    for (int g = 0; g < pw.ngroups; ++g) {
      __m256i part[MR][NC];
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
        for (int j = 0; j < NC; ++j) part[r][j] = _mm256_setzero_si256();
      const int s1 = (g + 1) * gs < k2 ? (g + 1) * gs : k2;
      dot_steps<MR, NC, INT4>(xs, k2p, g * gs, s1, wp, pstride, part);
#pragma GCC unroll 4
      for (int j = 0; j < NC; ++j) {
        const __m256i sub = _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(subs + (static_cast<int64_t>(vec0 + j) * pw.ngroups + g) * 8));
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) acc[r][j] = _mm256_add_epi32(acc[r][j], _mm256_mullo_epi32(part[r][j], sub));
      }
    }
  } else {
    dot_steps<MR, NC, INT4>(xs, k2p, 0, k2, wp, pstride, acc);
  }
  const Epi e(a.q);
  const int esz = e.out_int32 ? 4 : 1;
  const bool pairs = NC % 2 == 0 && e.packs && pw.n >= (vec0 + NC) * 8;  // every channel of the tile valid
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    const int row = row0 + r;
    if (row >= a.m) continue;
    uint8_t* orow = static_cast<uint8_t*>(a.out) + static_cast<int64_t>(row) * a.ldo * esz;
    const uint8_t* rrow = a.res ? a.res + static_cast<int64_t>(row) * a.ldr : nullptr;
    if (pairs) {
#pragma GCC unroll 4
      for (int j = 0; j + 1 < NC; j += 2) {
        const int c = (vec0 + j) * 8;
        epi16(acc[r][j], acc[r][j + 1], e, c, orow + c, rrow ? rrow + c : nullptr);
      }
      continue;
    }
#pragma GCC unroll 4
    for (int j = 0; j < NC; ++j) {
      const int c = (vec0 + j) * 8;
      const int n = pw.n - c < 8 ? pw.n - c : 8;
      epilogue(acc[r][j], e, c, n, orow + c * esz, rrow ? rrow + c : nullptr);
    }
  }
}

template <int MR, int NCMAX, bool INT4, bool GROUPED>
void gemm_impl(const GemmArgs& a, int threads) {
  constexpr int MB = 8;
  const int k = a.w->k;
  const int k2p = (k + 1) / 2 * 2;
  const int nvec = (a.w->n + 7) / 8;
  const int ncg = (nvec + NCMAX - 1) / NCMAX;
  const int mtiles = (a.m + MR - 1) / MR;
  const int nmb = (mtiles + MB - 1) / MB;
  par(threads, nmb * ncg, [&](int t0, int t1) {
    uint16_t* xs = new uint16_t[static_cast<size_t>(MR) * MB * k2p];
    int packed_mb = -1;
    for (int t = t0; t < t1; ++t) {
      const int mb = t / ncg, cg = t % ncg;
      const int mt1 = (mb + 1) * MB < mtiles ? (mb + 1) * MB : mtiles;
      if (mb != packed_mb) {
        for (int mt = mb * MB; mt < mt1; ++mt) pack_rows<MR>(a, mt * MR, k, k2p, xs + (mt - mb * MB) * MR * k2p);
        packed_mb = mb;
      }
      const int vec0 = cg * NCMAX;
      const int nc = nvec - vec0 < NCMAX ? nvec - vec0 : NCMAX;
      for (int mt = mb * MB; mt < mt1; ++mt) {
        const uint16_t* x = xs + (mt - mb * MB) * MR * k2p;
        if (nc == NCMAX) {
          tile<MR, NCMAX, INT4, GROUPED>(a, x, k2p, mt * MR, vec0);
        } else {
          for (int v = vec0; v < vec0 + nc; ++v) tile<MR, 1, INT4, GROUPED>(a, x, k2p, mt * MR, v);
        }
      }
    }
    delete[] xs;
  });
}

}  // namespace

void gemm(const GemmArgs& a, int threads) {
  const bool int4 = a.w->bits == 4;
  if (a.w->grouped) {
    if (int4) gemm_impl<2, 2, true, true>(a, threads);
    else gemm_impl<2, 2, false, true>(a, threads);
  } else if (a.m < 4) {  // a few rows (linear layers): one row per tile, 32 channels, no rows computed in vain
    if (int4) gemm_impl<1, 4, true, false>(a, threads);
    else gemm_impl<1, 4, false, false>(a, threads);
  } else {  // 4 x 2 tiles: 8 accumulators; 6 x 2 (12) left GCC too few of the 16 ymm registers and it spilled them
    if (int4) gemm_impl<4, 2, true, false>(a, threads);
    else gemm_impl<4, 2, false, false>(a, threads);
  }
}

namespace {

// 16 channels at p as int16.
inline __m256i dw_load16(const uint8_t* p) {
  return _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// As dw_load16 for the channel tail, whose 16-byte read may pass the input's last byte (lim): it reads past the
// pixel's channels only while that stays inside the input (those lanes are never stored), else copies.
inline __m256i dw_load16_tail(const uint8_t* p, const uint8_t* lim, int n) {
  if (p + 16 <= lim) return dw_load16(p);
  uint8_t tmp[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  std::memcpy(tmp, p, static_cast<size_t>(n));
  return dw_load16(tmp);
}

// One output pixel, 16 channels from byte offset off of every tap pointer tp[t] (t = ky * k + kx): sum_t x_t * w_t.
// Two taps per vpmaddwd: the (x_t, x_t+1) int16 pairs of _mm256_unpack{lo,hi}_epi16 against the (w_t, w_t+1)
// pairs of pack_dw_pairs; x * |w| <= 255 * 127, so each pair sum is exact in int32. The zero point is not
// subtracted per tap: the epilogue adds dw_init = bias - in_zp * sum_t w_t instead, and a tap outside the image
// points at a row of in_zp bytes, and that term cancels the in_zp * w_t it adds, so the int32 result equals bias +
// sum over the taps inside of (x - in_zp) * w (mod 2^32, which the true sum fits). lo holds channels 0-3 | 8-11,
// hi 4-7 | 12-15.
template <int KK, bool Tail>
inline void dw_pixel(const uint8_t* const* tp, int64_t off, const int16_t* wb, int kk, const uint8_t* lim, int n,
                     __m256i& lo, __m256i& hi) {
  const int taps = KK ? KK : kk;
  const __m256i zero = _mm256_setzero_si256();
  lo = hi = zero;
#pragma GCC unroll 49
  for (int t = 0; t < taps; t += 2) {
    const __m256i xa = Tail ? dw_load16_tail(tp[t] + off, lim, n) : dw_load16(tp[t] + off);
    __m256i xb = zero;  // odd tap count: the last pair's second weight is 0
    if (t + 1 < taps) xb = Tail ? dw_load16_tail(tp[t + 1] + off, lim, n) : dw_load16(tp[t + 1] + off);
    const __m256i* w = reinterpret_cast<const __m256i*>(wb + t * 16);
    lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_unpacklo_epi16(xa, xb), _mm256_load_si256(w)));
    hi = _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_unpackhi_epi16(xa, xb), _mm256_load_si256(w + 1)));
  }
}

// Every channel block of one output pixel (tap pointers tp, output o), each requantized as 16 channels (epi16) or
// as channels 0-7 and 8-15 (e: a.q with the folded bias dw_init).
template <int KK>
inline void dw_pixel_all(const DwArgs& a, const Epi& e, const uint8_t* const* tp, uint8_t* o, int kk,
                         const uint8_t* lim) {
  const int np = (kk + 1) / 2;
  const int16_t* wb = reinterpret_cast<const int16_t*>(a.dw_w);
  int c = 0;
  __m256i lo, hi;
  for (; c + 16 <= a.c; c += 16, wb += np * 32) {
    dw_pixel<KK, false>(tp, c, wb, kk, lim, 16, lo, hi);
    const __m256i a0 = _mm256_permute2x128_si256(lo, hi, 0x20), a1 = _mm256_permute2x128_si256(lo, hi, 0x31);
    if (e.packs) {
      epi16(a0, a1, e, c, o + c, nullptr);
    } else {
      epilogue(a0, e, c, 8, o + c, nullptr);
      epilogue(a1, e, c + 8, 8, o + c + 8, nullptr);
    }
  }
  if (c < a.c) {
    const int n = a.c - c;
    dw_pixel<KK, true>(tp, c, wb, kk, lim, n, lo, hi);
    epilogue(_mm256_permute2x128_si256(lo, hi, 0x20), e, c, n < 8 ? n : 8, o + c, nullptr);
    if (n > 8) epilogue(_mm256_permute2x128_si256(lo, hi, 0x31), e, c + 8, n - 8, o + c + 8, nullptr);
  }
}

// K: kernel size (0: a.k at run time). Per output row, the columns whose taps all lie inside the image (and a row
// whose kernel rows all do) take their tap pointers without bound checks; border pixels point the taps outside
// the image at zrow (in_zp bytes).
template <int K>
void dw_impl(const DwArgs& a, int threads) {
  const int k = K ? K : a.k, kk = k * k, pad = k / 2, s = a.stride;
  const int64_t C = a.c;
  RqView q = a.q;
  q.bias = a.dw_init;
  const Epi e(q);
  const int rows = dw_rows(a);
  const int held = a.held ? a.held : a.h;
  const uint8_t* lim = a.x + static_cast<int64_t>(a.batch) * held * a.w * C;
  // a tail block reads 16 bytes from zrow + c; zrow's padding keeps that inside
  const std::vector<uint8_t> zbuf(static_cast<size_t>(a.c) + 32, static_cast<uint8_t>(a.in_zp));
  const uint8_t* zrow = zbuf.data();
  // columns [ox_lo, ox_hi) have every tap inside the image horizontally
  const int ox_lo = std::min(a.wo, (pad + s - 1) / s);
  const int ox_hi = std::max(ox_lo, std::min(a.wo, a.w - k + pad >= 0 ? (a.w - k + pad) / s + 1 : 0));
  par(threads, a.batch * rows, [&](int r0, int r1) {
    const uint8_t* tp[49];
    const uint8_t* rowp[7];
    for (int r = r0; r < r1; ++r) {
      const int b = r / rows, oy = a.oy0 + r % rows;
      const int iy0 = oy * s - pad;
      bool rows_in = true;
      for (int ky = 0; ky < k; ++ky) {
        const int iy = iy0 + ky;
        const bool in = iy >= 0 && iy < a.h;
        rowp[ky] = in ? dw_in_row(a, b, iy) : nullptr;
        rows_in = rows_in && in;
      }
      uint8_t* orow = dw_out_row(a, b, oy);
      for (int ox = 0; ox < a.wo; ++ox) {
        const int ix0 = ox * s - pad;
        if (rows_in && ox >= ox_lo && ox < ox_hi) {
#pragma GCC unroll 7
          for (int ky = 0; ky < k; ++ky)
#pragma GCC unroll 7
            for (int kx = 0; kx < k; ++kx) tp[ky * k + kx] = rowp[ky] + (ix0 + kx) * C;
        } else {
          for (int ky = 0; ky < k; ++ky)
            for (int kx = 0; kx < k; ++kx) {
              const int ix = ix0 + kx;
              tp[ky * k + kx] = rowp[ky] && ix >= 0 && ix < a.w ? rowp[ky] + ix * C : zrow;
            }
        }
        dw_pixel_all<K * K>(a, e, tp, orow + ox * C, kk, lim);
      }
    }
  });
}

}  // namespace

void depthwise(const DwArgs& a, int threads) {
  switch (a.k) {
    case 3: dw_impl<3>(a, threads); break;
    case 5: dw_impl<5>(a, threads); break;
    case 7: dw_impl<7>(a, threads); break;
    // the Depthwise op admits only k = 3, 5, 7 (ops.cpp); other sizes the pointer arrays hold run with k read at
    // run time, and larger ones would overrun them
    default:
      if (a.k > 7) std::abort();
      dw_impl<0>(a, threads);
      break;
  }
}

void pool(const PoolArgs& a, int threads) {
  const int ncb = (a.c + 7) / 8;
  par(threads, a.batch * ncb, [&](int t0, int t1) {
    for (int t = t0; t < t1; ++t) {
      const int b = t / ncb, c = (t % ncb) * 8;
      const int n = a.c - c < 8 ? a.c - c : 8;
      const uint8_t* x = a.x + static_cast<int64_t>(b) * a.hw * a.c + c;
      __m256i s = _mm256_setzero_si256();
      for (int p = 0; p < a.hw; ++p) s = _mm256_add_epi32(s, load8_u8(x + static_cast<int64_t>(p) * a.c, n));
      s = _mm256_sub_epi32(s, bcast(a.hw * a.in_zp));
      store8(a.out + b * a.c + c, scale_round(s, a.scale, a.out_zp), n);
    }
  });
}

void channel_scale(const ScaleArgs& a, int threads) {
  par(threads, a.batch * a.hw, [&](int p0, int p1) {
    const __m256i zpv = bcast(a.in_zp);
    for (int p = p0; p < p1; ++p) {
      const int b = p / a.hw;
      const uint8_t* x = a.x + static_cast<int64_t>(p) * a.c;
      const uint8_t* g = a.gate + static_cast<int64_t>(b) * a.c;
      uint8_t* o = a.out + static_cast<int64_t>(p) * a.c;
      for (int c = 0; c < a.c; c += 8) {
        const int n = a.c - c < 8 ? a.c - c : 8;
        const __m256i xv = _mm256_sub_epi32(load8_u8(x + c, n), zpv);
        const __m256i gv = load8_u8(g + c, n);
        store8(o + c, scale_round(_mm256_madd_epi16(xv, gv), a.scale, a.out_zp), n);
      }
    }
  });
}

namespace {

inline __m256i lane_mask(int n) {  // lanes [0, n) set (n clamped to 8)
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n < 8 ? n : 8), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// 8 channels at p: all 8 (Full) or the lanes of m (the channel tail; vmaskmov is slow on some CPUs)
template <bool Full>
inline __m256 ld(const float* p, __m256i m) {
  if constexpr (Full) return _mm256_loadu_ps(p);
  else return _mm256_maskload_ps(p, m);
}

// Interior columns run two at a time while the 2K accumulators fit in the 16 ymm registers (K <= 5); K = 7 and
// 9 keep K chains, enough to cover the FMA latency.
template <int K>
constexpr bool kPair = 2 * K <= 12;

// One output row (image n, row oy) against input row iy (kernel row i) for a block of 8 channels: acc[j]
// (+ acc2[j]) += sum over columns of x[iy][ox * s + j - pad] * g[oy][ox]. Border taps outside the input are
// skipped.
template <int K, bool Full>
inline void dw_grad_row(const DwGradArgs& a, const float* grow, const float* xrow, __m256i m, int ox_lo, int ox_hi,
                        __m256* acc, __m256* acc2) {
  const int C = a.c, s = a.stride, pad = a.pad;
  for (int e = 0; e < 2; ++e) {  // columns with a tap outside the input (at most K - 1 on each side)
    const int ox0 = e == 0 ? 0 : ox_hi, ox1 = e == 0 ? ox_lo : a.wo;
    for (int ox = ox0; ox < ox1; ++ox) {
      const __m256 gv = ld<Full>(grow + static_cast<int64_t>(ox) * C, m);
#pragma GCC unroll 16
      for (int j = 0; j < K; ++j) {
        const int ix = ox * s + j - pad;
        if (ix >= 0 && ix < a.w) acc[j] = _mm256_fmadd_ps(ld<Full>(xrow + static_cast<int64_t>(ix) * C, m), gv, acc[j]);
      }
    }
  }
  int ox = ox_lo;
  if constexpr (kPair<K>) {
    for (; ox + 1 < ox_hi; ox += 2) {
      const __m256 g0 = ld<Full>(grow + static_cast<int64_t>(ox) * C, m);
      const __m256 g1 = ld<Full>(grow + static_cast<int64_t>(ox + 1) * C, m);
      const float* x0 = xrow + static_cast<int64_t>(ox * s - pad) * C;
      const float* x1 = x0 + static_cast<int64_t>(s) * C;
#pragma GCC unroll 16
      for (int j = 0; j < K; ++j) {
        acc[j] = _mm256_fmadd_ps(ld<Full>(x0 + static_cast<int64_t>(j) * C, m), g0, acc[j]);
        acc2[j] = _mm256_fmadd_ps(ld<Full>(x1 + static_cast<int64_t>(j) * C, m), g1, acc2[j]);
      }
    }
  }
  for (; ox < ox_hi; ++ox) {
    const __m256 gv = ld<Full>(grow + static_cast<int64_t>(ox) * C, m);
    const float* x0 = xrow + static_cast<int64_t>(ox * s - pad) * C;
#pragma GCC unroll 16
    for (int j = 0; j < K; ++j) acc[j] = _mm256_fmadd_ps(ld<Full>(x0 + static_cast<int64_t>(j) * C, m), gv, acc[j]);
  }
}

template <int K, bool Full>
inline void zero_acc(__m256* acc, __m256* acc2) {
#pragma GCC unroll 16
  for (int j = 0; j < K; ++j) acc[j] = acc2[j] = _mm256_setzero_ps();
}

// pi[j * C + c] += acc[j] (+ acc2[j]) for the block's channels
template <int K, bool Full>
inline void add_acc(float* pi, int C, __m256i m, const __m256* acc, const __m256* acc2) {
#pragma GCC unroll 16
  for (int j = 0; j < K; ++j) {
    float* q = pi + static_cast<int64_t>(j) * C;
    __m256 sum = acc[j];
    if constexpr (kPair<K>) sum = _mm256_add_ps(sum, acc2[j]);
    if constexpr (Full) _mm256_storeu_ps(q, _mm256_add_ps(_mm256_loadu_ps(q), sum));
    else _mm256_maskstore_ps(q, m, _mm256_add_ps(_mm256_maskload_ps(q, m), sum));
  }
}

template <int K, bool Full>
inline void dw_grad_block(const DwGradArgs& a, const float* grow, const float* xrow, float* pi, __m256i m,
                          int ox_lo, int ox_hi) {
  __m256 acc[K], acc2[K];
  zero_acc<K, Full>(acc, acc2);
  dw_grad_row<K, Full>(a, grow, xrow, m, ox_lo, ox_hi, acc, acc2);
  add_acc<K, Full>(pi, a.c, m, acc, acc2);
}

// Small images (a chunk's input and output gradient, at most 1 MB, fit in L2): a block of 8 channels and one
// kernel row accumulate in registers over every row of the chunk's images, then store once; row by row, the K
// stores per row cost as much as the few taps of a 6-pixel row.
template <int K, bool Full>
void dw_grad_block_all_rows(const DwGradArgs& a, int n0, int n1, int c0, float* p, __m256i m, int ox_lo,
                            int ox_hi) {
  const int C = a.c;
  for (int i = 0; i < K; ++i) {
    __m256 acc[K], acc2[K];
    zero_acc<K, Full>(acc, acc2);
    for (int n = n0; n < n1; ++n)
      for (int oy = 0; oy < a.ho; ++oy) {
        const int iy = oy * a.stride + i - a.pad;
        if (iy < 0 || iy >= a.h) continue;
        dw_grad_row<K, Full>(a, a.g + ((static_cast<int64_t>(n) * a.ho + oy) * a.wo) * C + c0,
                             a.x + ((static_cast<int64_t>(n) * a.h + iy) * a.w) * C + c0, m, ox_lo, ox_hi, acc, acc2);
      }
    add_acc<K, Full>(p + static_cast<int64_t>(i) * K * C + c0, C, m, acc, acc2);
  }
}

// One chunk of images of the float32 depthwise weight gradient: the AVX-512 kernel's loop order (per output
// row and kernel row, every block of 8 channels over the row's columns, K taps in registers) on 8 lanes.
template <int K>
void dw_grad_chunk(const DwGradArgs& a, int chunk) {
  const int C = a.c, s = a.stride, pad = a.pad;
  const int ox_lo = std::min(a.wo, (pad + s - 1) / s);
  const int ox_hi = std::max(ox_lo, std::min(a.wo, a.w - K + pad >= 0 ? (a.w - K + pad) / s + 1 : 0));
  float* p = a.partial + static_cast<int64_t>(chunk) * K * K * C;
  std::memset(p, 0, sizeof(float) * static_cast<size_t>(K) * K * C);  // no std:: template built for AVX2 here
  const int n0 = chunk * kDwGradChunk, n1 = std::min(a.batch, (chunk + 1) * kDwGradChunk);
  const int64_t bytes = static_cast<int64_t>(n1 - n0) * (a.h * a.w + a.ho * a.wo) * C * 4;
  if (bytes <= 1024 * 1024) {
    int c0 = 0;
    for (; c0 + 8 <= C; c0 += 8)
      dw_grad_block_all_rows<K, true>(a, n0, n1, c0, p, _mm256_setzero_si256(), ox_lo, ox_hi);
    if (c0 < C) dw_grad_block_all_rows<K, false>(a, n0, n1, c0, p, lane_mask(C - c0), ox_lo, ox_hi);
    return;
  }
  for (int n = n0; n < n1; ++n)
    for (int oy = 0; oy < a.ho; ++oy)
      for (int i = 0; i < K; ++i) {
        const int iy = oy * s + i - pad;
        if (iy < 0 || iy >= a.h) continue;
        const float* grow = a.g + ((static_cast<int64_t>(n) * a.ho + oy) * a.wo) * C;
        const float* xrow = a.x + ((static_cast<int64_t>(n) * a.h + iy) * a.w) * C;
        float* pi = p + static_cast<int64_t>(i) * K * C;
        int c0 = 0;
        for (; c0 + 8 <= C; c0 += 8)
          dw_grad_block<K, true>(a, grow + c0, xrow + c0, pi + c0, _mm256_setzero_si256(), ox_lo, ox_hi);
        if (c0 < C) dw_grad_block<K, false>(a, grow + c0, xrow + c0, pi + c0, lane_mask(C - c0), ox_lo, ox_hi);
      }
}

template <int K>
void dw_grad_all(const DwGradArgs& a, int threads) {
  par_fresh(threads, (a.batch + kDwGradChunk - 1) / kDwGradChunk, [&](int t0, int t1) {
    for (int t = t0; t < t1; ++t) dw_grad_chunk<K>(a, t);
  });
}

}  // namespace

void dw_weight_grad(const DwGradArgs& a, int threads) {
  // inputs at most half the kernel wide (3 px under a 7x7 kernel) are almost all padding: the portable loop's
  // long runs over channels win there (1200 channels, 3 px, k 7: 0.71x; 6 px: 1.56x faster than it, measured)
  if (2 * a.w <= a.k) {
    ref::dw_weight_grad(a, threads);
    return;
  }
  switch (a.k) {
    case 1: dw_grad_all<1>(a, threads); break;
    case 3: dw_grad_all<3>(a, threads); break;
    case 5: dw_grad_all<5>(a, threads); break;
    case 7: dw_grad_all<7>(a, threads); break;
    case 9: dw_grad_all<9>(a, threads); break;
    default: ref::dw_weight_grad(a, threads); return;
  }
  dw_grad_reduce(a);
}

int64_t fake_quant(const float* x, int64_t n, float scale, float inv_scale, float zp, float qmin, float qmax,
                   float* out, uint8_t* mask) {
  const __m256 vs = _mm256_set1_ps(scale), vi = _mm256_set1_ps(inv_scale), vz = _mm256_set1_ps(zp);
  const __m256 lo = _mm256_set1_ps(qmin), hi = _mm256_set1_ps(qmax);
  const __m256i one = _mm256_set1_epi32(1);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    // x * inv_scale is rounded to float before the rounding to nearest even, as in the scalar form (no FMA)
    const __m256 p = _mm256_mul_ps(_mm256_loadu_ps(x + i), vi);
    const __m256 q = _mm256_add_ps(_mm256_round_ps(p, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), vz);
    const __m256 in = _mm256_and_ps(_mm256_cmp_ps(q, lo, _CMP_GE_OQ), _mm256_cmp_ps(q, hi, _CMP_LE_OQ));
    const __m256 c = _mm256_min_ps(_mm256_max_ps(q, lo), hi);
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_sub_ps(c, vz), vs));
    store8(mask + i, _mm256_and_si256(_mm256_castps_si256(in), one), 8);
  }
  return i;
}

}  // namespace avx2
}  // namespace nask

#pragma GCC pop_options

#endif  // x86-64
