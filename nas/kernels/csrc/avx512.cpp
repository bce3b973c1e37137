// AVX512-VNNI kernels: vpdpbusd (u8 activations x s8 weights -> s32) register-blocked GEMM,
// NHWC depthwise (4 taps per vpdpbusd), pooling and SE channel scaling; float32 requantization epilogue.
// All headers are included before the target pragma so no library code is compiled for AVX-512.
#if defined(__x86_64__) || defined(_M_X64)  // compiles to nothing on other architectures
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

constexpr int kRne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

inline __mmask16 tail_mask(int n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1); }

// Loop-invariant epilogue state, copied out of RqView into locals so that the uint8 output stores (which
// may alias anything) do not force reloads inside the row loops.
struct Epi {
  __m512 flo, fhi, rscale;
  __m512i zp, rzp, zp16, lo8, hi8;
  bool residual, out_int32, no_overflow;
  const int32_t* lut32;
  explicit Epi(const RqView& q) {
    zp16 = _mm512_set1_epi16(static_cast<int16_t>(q.zp));
    lo8 = _mm512_set1_epi8(static_cast<char>(q.lo));
    hi8 = _mm512_set1_epi8(static_cast<char>(q.hi));
    no_overflow = q.no_overflow;
    flo = _mm512_set1_ps(q.flo);
    fhi = _mm512_set1_ps(q.fhi);
    rscale = _mm512_set1_ps(q.res_scale);
    zp = _mm512_set1_epi32(q.zp);
    rzp = _mm512_set1_epi32(q.res_zp);
    residual = q.residual;
    out_int32 = q.out_int32;
    lut32 = q.lut32;
  }
};

// float32(acc) * scale, both roundings to nearest even (independent of MXCSR).
inline __m512 mulf(__m512i acc, __m512 scale) {
  return _mm512_mul_round_ps(_mm512_cvt_roundepi32_ps(acc, kRne), scale, kRne);
}

// rne(min(max(v, flo), fhi)) as int32.
inline __m512i round_clamp(__m512 v, __m512 flo, __m512 fhi) {
  return _mm512_cvt_roundps_epi32(_mm512_min_ps(_mm512_max_ps(v, flo), fhi), kRne);
}

// Requantize 16 int32 accumulators (bias included) of channels with scales `scale` and store (masked) to out.
inline void epi_store(__m512i acc, const Epi& e, const float* scale, __mmask16 m, void* out, const uint8_t* res) {
  if (e.out_int32) {
    _mm512_mask_storeu_epi32(out, m, acc);
    return;
  }
  __m512 v = mulf(acc, _mm512_loadu_ps(scale));
  if (e.residual) {
    const __m512i r = _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, res)), e.rzp);
    v = _mm512_add_round_ps(v, mulf(r, e.rscale), kRne);
  }
  __m512i y = _mm512_add_epi32(round_clamp(v, e.flo, e.fhi), e.zp);
  if (e.lut32) y = _mm512_i32gather_epi32(y, e.lut32, 4);
  const __m128i b = _mm512_cvtepi32_epi8(y);
  if (m == 0xFFFF) {
    _mm_storeu_si128(static_cast<__m128i*>(out), b);
  } else {
    _mm_mask_storeu_epi8(out, m, b);
  }
}

// 64 outputs (4 accumulators of 16 natural-order channels, bias included) -> 64 bytes, for ops with
// no_overflow and no LUT: rne(v) as int32, vpackssdw / saturating + zp / vpackuswb / byte clamp to [lo, hi]
// (same bits as clamping v first, see RqView::no_overflow), then vpermd undoes the packs' lane interleave.
// res: 64 residual bytes (or nullptr); m: valid-byte mask (all ones unless the channel tail).
inline void epi_store64(__m512i a0, __m512i a1, __m512i a2, __m512i a3, const Epi& e, const float* scale,
                        __mmask64 m, uint8_t* out, const uint8_t* res) {
  const __m512i acc[4] = {a0, a1, a2, a3};
  __m512i t[4];
#pragma GCC unroll 8
  for (int j = 0; j < 4; ++j) {
    __m512 v = mulf(acc[j], _mm512_loadu_ps(scale + 16 * j));
    if (res) {
      const __m512i r = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(static_cast<__mmask16>(m >> (16 * j)), res + 16 * j));
      v = _mm512_add_round_ps(v, mulf(_mm512_sub_epi32(r, e.rzp), e.rscale), kRne);
    }
    t[j] = _mm512_cvt_roundps_epi32(v, kRne);
  }
  const __m512i p01 = _mm512_adds_epi16(_mm512_packs_epi32(t[0], t[1]), e.zp16);
  const __m512i p23 = _mm512_adds_epi16(_mm512_packs_epi32(t[2], t[3]), e.zp16);
  __m512i y = _mm512_min_epu8(_mm512_max_epu8(_mm512_packus_epi16(p01, p23), e.lo8), e.hi8);
  // dword 4L + q of y holds channels 16q + 4L .. 16q + 4L + 3
  y = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), y);
  if (m == ~__mmask64(0)) _mm512_storeu_si512(out, y);
  else _mm512_mask_storeu_epi8(out, m, y);
}

// Same for 32 outputs (2 accumulators); m: valid-byte mask.
inline void epi_store32(__m512i a0, __m512i a1, const Epi& e, const float* scale, __mmask32 m, uint8_t* out,
                        const uint8_t* res) {
  const __m512i acc[2] = {a0, a1};
  __m512i t[2];
#pragma GCC unroll 2
  for (int j = 0; j < 2; ++j) {
    __m512 v = mulf(acc[j], _mm512_loadu_ps(scale + 16 * j));
    if (res) {
      const __m512i r = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(static_cast<__mmask16>(m >> (16 * j)), res + 16 * j));
      v = _mm512_add_round_ps(v, mulf(_mm512_sub_epi32(r, e.rzp), e.rscale), kRne);
    }
    t[j] = _mm512_cvt_roundps_epi32(v, kRne);
  }
  const __m512i p = _mm512_adds_epi16(_mm512_packs_epi32(t[0], t[1]), e.zp16);
  __m512i y = _mm512_min_epu8(_mm512_max_epu8(_mm512_packus_epi16(p, p), e.lo8), e.hi8);
  // dword 4L holds channels 4L..4L+3, dword 4L + 1 channels 16 + 4L..16 + 4L + 3
  y = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0), y);
  const __m256i y32 = _mm512_castsi512_si256(y);
  if (m == ~__mmask32(0)) _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), y32);
  else _mm256_mask_storeu_epi8(out, m, y32);
}

// rne(clamp(float32(v) * scale, -zp, 255 - zp)) + zp
inline __m512i scale_round(__m512i v, float scale, int32_t zp) {
  const __m512 f = mulf(v, _mm512_set1_ps(scale));
  return _mm512_add_epi32(
      round_clamp(f, _mm512_set1_ps(static_cast<float>(-zp)), _mm512_set1_ps(static_cast<float>(255 - zp))),
      _mm512_set1_epi32(zp));
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
// (x of row r at step s is xr[r] + 4 * (s - xs0))
template <int MR, int NC, bool INT4>
inline void dot_steps(const uint8_t* const* xr, int s0, int s1, int k, const uint8_t* wp, int64_t pstride,
                      __m512i (&acc)[MR][NC], const Int4Consts& c4, int xs0 = 0) {
  constexpr int WB = INT4 ? 32 : 64;
  const int sfull = s1 < k / 4 ? s1 : k / 4;
  for (int s = s0; s < sfull; ++s) {
    __m512i w[NC];
#pragma GCC unroll 8
    for (int j = 0; j < NC; ++j) w[j] = load_w<INT4>(wp + j * pstride + s * WB, c4);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512i b = _mm512_set1_epi32(load4(xr[r] + 4 * (s - xs0)));
#pragma GCC unroll 8
      for (int j = 0; j < NC; ++j) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], b, w[j]);
    }
  }
  if (sfull < s1) {  // last, partial k-step (K % 4 != 0); packed weights are zero there
    const int s = sfull;
    __m512i w[NC];
#pragma GCC unroll 8
    for (int j = 0; j < NC; ++j) w[j] = load_w<INT4>(wp + j * pstride + s * WB, c4);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512i b = _mm512_set1_epi32(load_partial(xr[r] + 4 * (s - xs0), k - 4 * s));
#pragma GCC unroll 8
      for (int j = 0; j < NC; ++j) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], b, w[j]);
    }
  }
}

// panel: int8 weights of vectors vec0.. already unpacked ([NC][k4][64], int4 ops), or nullptr.
template <int MR, int NC, bool INT4, bool GROUPED, bool CONV = false>
void tile(const GemmArgs& a, int row0, int vec0, const uint8_t* panel = nullptr) {
  const PackedWeights& pw = *a.w;
  const int k = pw.k, k4 = (k + 3) / 4;
  const int64_t pstride = static_cast<int64_t>(k4) * (INT4 ? 32 : 64);
  const uint8_t* wp = panel ? panel : pw.w.ptr + vec0 * pstride;
  const uint8_t* xr[MR];
  if (CONV) {  // output pixel (b, oy, ox) of row0, then step along the rows; extra rows repeat the last one
    const ConvGeom& g = *a.conv;
    int ox = row0 % g.wo, oy = (row0 / g.wo) % g.ho, b = row0 / g.wo / g.ho;
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      xr[r] = g.pad + ((static_cast<int64_t>(b) * g.hp + oy * g.stride) * g.wp + ox * g.stride) * g.cin;
      if (row0 + r + 1 < a.m && ++ox == g.wo) {
        ox = 0;
        if (++oy == g.ho) {
          oy = 0;
          ++b;
        }
      }
    }
  } else {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const int row = row0 + r < a.m ? row0 + r : a.m - 1;  // clamp: extra rows computed, not stored
      xr[r] = a.x + row * a.ldx;
    }
  }
  const Int4Consts c4;
  // every loop over acc is fully unrolled (constant trip counts): a runtime index would force the
  // accumulators into memory (GCC then keeps stack copies of them inside the k loop)
  __m512i acc[MR][NC];
#pragma GCC unroll 8
  for (int j = 0; j < NC; ++j) {
    const __m512i b = _mm512_loadu_si512(a.q.bias + (vec0 + j) * 16);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) acc[r][j] = b;
  }
  if (GROUPED) {
    const int gs = pw.group / 4;
    const int32_t* subs = reinterpret_cast<const int32_t*>(pw.subs.ptr);
    for (int g = 0; g < pw.ngroups; ++g) {
      __m512i part[MR][NC];
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
        for (int j = 0; j < NC; ++j) part[r][j] = _mm512_setzero_si512();
      const int s1 = (g + 1) * gs < k4 ? (g + 1) * gs : k4;
      dot_steps<MR, NC, INT4>(xr, g * gs, s1, k, wp, pstride, part, c4);
#pragma GCC unroll 8
      for (int j = 0; j < NC; ++j) {
        const __m512i sub = _mm512_loadu_si512(subs + (static_cast<int64_t>(vec0 + j) * pw.ngroups + g) * 16);
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) acc[r][j] = _mm512_add_epi32(acc[r][j], _mm512_mullo_epi32(part[r][j], sub));
      }
    }
  } else if (CONV) {
    const ConvGeom& g = *a.conv;
    const int spk = g.seg4 / 4;
    const int64_t rstride = static_cast<int64_t>(g.wp) * g.cin;
    for (int ky = 0; ky < g.k; ++ky) {
      dot_steps<MR, NC, INT4>(xr, ky * spk, (ky + 1) * spk, k, wp, pstride, acc, c4, ky * spk);
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) xr[r] += rstride;
    }
  } else {
    dot_steps<MR, NC, INT4>(xr, 0, k4, k, wp, pstride, acc, c4);
  }
  const Epi e(a.q);
  if constexpr (NC != 1 && NC != 3) {  // packed epilogues: 64 channels (+ 32)
    if (!e.out_int32 && !e.lut32 && e.no_overflow) {
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const int row = row0 + r;
        if (row >= a.m) continue;
        int c = vec0 * 16;
        uint8_t* o = static_cast<uint8_t*>(a.out) + row * a.ldo;
        const uint8_t* res = a.res ? a.res + row * a.ldr : nullptr;
        if constexpr (NC >= 4) {
          const int nv = pw.n - c;
          epi_store64(acc[r][0], acc[r][1], acc[r][2], acc[r][3], e, a.q.scale + c,
                      nv >= 64 ? ~__mmask64(0) : ((__mmask64(1) << nv) - 1), o + c, res ? res + c : nullptr);
          c += 64;
        }
        if constexpr (NC % 4 == 2) {
          const int nv = pw.n - c;
          epi_store32(acc[r][NC - 2], acc[r][NC - 1], e, a.q.scale + c,
                      nv >= 32 ? ~__mmask32(0) : ((__mmask32(1) << nv) - 1), o + c, res ? res + c : nullptr);
        }
      }
      return;
    }
  }
  const int esz = e.out_int32 ? 4 : 1;
#pragma GCC unroll 8
  for (int j = 0; j < NC; ++j) {
    const int c = (vec0 + j) * 16;
    const float* sc = a.q.scale + c;
    const __mmask16 m = tail_mask(pw.n - c);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const int row = row0 + r;
      if (row < a.m) {
        uint8_t* o = static_cast<uint8_t*>(a.out) + (row * a.ldo + c) * esz;
        epi_store(acc[r][j], e, sc, m, o, a.res ? a.res + row * a.ldr + c : nullptr);
      }
    }
  }
}

// UNPACK (int4 weights, int8 tiles): each task unpacks its NCMAX-vector weight panel to int8 once and runs
// the int8 tiles on it for all its row tiles; tasks go column group major so consecutive tasks share it.
template <int MR, int NCMAX, bool INT4, bool GROUPED, bool CONV = false, bool UNPACK = false>
void gemm_impl(const GemmArgs& a, int threads) {
  constexpr int MB = 8;  // row tiles per cache block
  const int nvec = (a.w->n + 15) / 16;
  const int ncg = (nvec + NCMAX - 1) / NCMAX;
  const int mtiles = (a.m + MR - 1) / MR;
  const int nmb = (mtiles + MB - 1) / MB;
  const int k4 = (a.w->k + 3) / 4;
  par(threads, nmb * ncg, [&](int t0, int t1) {
    uint8_t* panel = nullptr;
    int panel_cg = -1;
    if (UNPACK) panel = static_cast<uint8_t*>(std::aligned_alloc(64, static_cast<size_t>(NCMAX) * k4 * 64));
    for (int t = t0; t < t1; ++t) {
      const int mb = UNPACK ? t % nmb : t / ncg, cg = UNPACK ? t / nmb : t % ncg;
      const int vec0 = cg * NCMAX;
      const int nc = nvec - vec0 < NCMAX ? nvec - vec0 : NCMAX;
      if (UNPACK && cg != panel_cg) {
        const Int4Consts c4;
        const uint8_t* src = a.w->w.ptr + static_cast<int64_t>(vec0) * k4 * 32;
        for (int64_t i = 0; i < static_cast<int64_t>(nc) * k4; ++i)
          _mm512_store_si512(panel + i * 64, load_w<true>(src + i * 32, c4));
        panel_cg = cg;
      }
      const int mt1 = (mb + 1) * MB < mtiles ? (mb + 1) * MB : mtiles;
      for (int mt = mb * MB; mt < mt1; ++mt) {
        const int row0 = mt * MR;
        switch (nc) {
          case 1: tile<MR, 1, INT4, GROUPED, CONV>(a, row0, vec0, panel); break;
          case 2: tile<MR, 2, INT4, GROUPED, CONV>(a, row0, vec0, panel); break;
          case 3: if constexpr (NCMAX >= 3) tile<MR, 3, INT4, GROUPED, CONV>(a, row0, vec0, panel); break;
          case 4: if constexpr (NCMAX >= 4) tile<MR, 4, INT4, GROUPED, CONV>(a, row0, vec0, panel); break;
          default: if constexpr (NCMAX >= 6) tile<MR, 6, INT4, GROUPED, CONV>(a, row0, vec0, panel); break;
        }
      }
    }
    std::free(panel);
  });
}

}  // namespace

void gemm(const GemmArgs& a, int threads) {
  // Register tiles: MR rows x NC 16-channel vectors (<= 24 accumulators). Few output channels get more rows,
  // so there are still enough independent vpdpbusd chains to cover its latency.
  const bool int4 = a.w->bits == 4;
  const int nvec = (a.w->n + 15) / 16;
  if (a.conv) {
    if (nvec <= 2) gemm_impl<10, 2, false, false, true>(a, threads);
    else gemm_impl<6, 4, false, false, true>(a, threads);
  } else if (a.w->grouped) {
    if (int4) gemm_impl<4, 2, true, true>(a, threads);
    else gemm_impl<4, 2, false, true>(a, threads);
  } else if (int4 && a.m < 16) {  // few rows (linear layers): unpack int4 in registers, no panel
    gemm_impl<5, 4, true, false>(a, threads);
  } else if (nvec == 1) {
    if (int4) gemm_impl<16, 1, false, false, false, true>(a, threads);
    else gemm_impl<16, 1, false, false>(a, threads);
  } else if (nvec == 2) {
    if (int4) gemm_impl<10, 2, false, false, false, true>(a, threads);
    else gemm_impl<10, 2, false, false>(a, threads);
  } else if (nvec % 4 == 2) {  // 6-vector groups (96, 160 output channels), 4 rows
    if (int4) gemm_impl<4, 6, false, false, false, true>(a, threads);
    else gemm_impl<4, 6, false, false>(a, threads);
  } else {
    if (int4) gemm_impl<6, 4, false, false, false, true>(a, threads);
    else gemm_impl<6, 4, false, false>(a, threads);
  }
}

namespace {

// Depthwise, 64 channels per step with vpdpbusd: the bytes of 4 vertical taps (rows 4g..4g+3 of one input
// column) are interleaved per channel (vpunpck{l,h}bw + vpunpck{l,h}wd), so one vpdpbusd adds 4 taps x 16
// channels. The interleave leaves the channels of zmm j, dword (lane L, i) as 16L + 4j + i; weights, start
// values and scales are packed in that order and vpackssdw + vpackuswb (+ one vpermd for 32-channel blocks)
// restore the natural order on output. A channel tail of <= 32 uses 32-channel blocks (CB = 32: the same
// interleave on ymm halves, two zmm per tap group, zmm j dword d = channel 16 ((d % 8) / 4) + 4 (2j + d / 8)
// + d % 4). Each input column is interleaved once per output row into a strip buffer and shared by the k
// output columns that read it. Padding (rows or columns outside the image) reads in_zp, which cancels against
// the start value bias - in_zp * sum(w); taps beyond k (to fill a group of 4) have zero weights.
constexpr int kDwStrip = 32;  // output columns per strip

// P adjacent output pixels x CB channels from the interleaved strip buffer; requantize and store.
template <int K, int S, int P, int CB>
inline void dw_out(const DwArgs& a, const Epi& e, const __m512i (&w)[K][(K + 3) / 4][CB / 16], const uint8_t* buf,
                   int ix0, int b, int oy, int ox, int c0, int nch, __mmask64 cm, const int32_t* init,
                   const float* scale) {
  constexpr int NG = (K + 3) / 4, PAD = K / 2, NZ = CB / 16, COL = NG * CB * 4;
  __m512i acc[P][NZ];
#pragma GCC unroll 8
  for (int j = 0; j < NZ; ++j) {
    const __m512i v = _mm512_loadu_si512(init + 16 * j);
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) acc[p][j] = v;
  }
  const uint8_t* base = buf + (ox * S - PAD - ix0) * COL;
#pragma GCC unroll 7
  for (int kx = 0; kx < K; ++kx)
#pragma GCC unroll 8
    for (int g = 0; g < NG; ++g)
#pragma GCC unroll 8
      for (int j = 0; j < NZ; ++j)
#pragma GCC unroll 8
        for (int p = 0; p < P; ++p)
          acc[p][j] = _mm512_dpbusd_epi32(
              acc[p][j], _mm512_load_si512(base + (p * S + kx) * COL + (g * NZ + j) * 64), w[kx][g][j]);
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) {
    __m512i y[NZ];
#pragma GCC unroll 8
    for (int j = 0; j < NZ; ++j) {
      const __m512 v = mulf(acc[p][j], _mm512_loadu_ps(scale + 16 * j));
      if (e.no_overflow && !e.lut32) {
        y[j] = _mm512_cvt_roundps_epi32(v, kRne);
      } else {
        y[j] = round_clamp(v, e.flo, e.fhi);
        if (e.lut32) y[j] = _mm512_i32gather_epi32(_mm512_add_epi32(y[j], e.zp), e.lut32, 4);
      }
    }
    __m512i p01 = _mm512_packs_epi32(y[0], y[1]), p23 = p01;
    if constexpr (NZ == 4) p23 = _mm512_packs_epi32(y[2], y[3]);
    if (!e.lut32) {  // saturating: exact within range, and out-of-range values stay out of [lo, hi]
      p01 = _mm512_adds_epi16(p01, e.zp16);
      p23 = _mm512_adds_epi16(p23, e.zp16);
    }
    uint8_t* o = dw_out_row(a, b, oy) + static_cast<int64_t>(ox + p) * a.c + c0;
    __m512i y8 = _mm512_packus_epi16(p01, p23);
    if (e.no_overflow && !e.lut32) y8 = _mm512_min_epu8(_mm512_max_epu8(y8, e.lo8), e.hi8);
    if constexpr (NZ == 2) {  // dword 4L holds the first, 4L + 1 the second 4-channel group of lane L
      y8 = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 8, 1, 9, 4, 12, 5, 13, 0, 0, 0, 0, 0, 0, 0, 0), y8);
    }
    if (nch == 64) {  // masked 64-byte stores are slow on some cores: only for channel tails
      _mm512_storeu_si512(o, y8);
    } else if (nch == 32) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), _mm512_castsi512_si256(y8));
    } else {
      _mm512_mask_storeu_epi8(o, cm, y8);
    }
  }
}

// Interleave the NG groups of 4 rows of input column ix (CB channels from c0 of rows[]) into col.
template <int NG, int CB>
inline void dw_column(const uint8_t* const* rows, bool in, int64_t off, __mmask64 cm, __m512i zpv, uint8_t* col) {
  for (int g = 0; g < NG; ++g) {
    if constexpr (CB == 64) {
      __m512i v[4];
      for (int t = 0; t < 4; ++t) {
        const uint8_t* r = rows[g * 4 + t];
        v[t] = (in && r) ? _mm512_maskz_loadu_epi8(cm, r + off) : zpv;
      }
      const __m512i ab_lo = _mm512_unpacklo_epi8(v[0], v[1]), ab_hi = _mm512_unpackhi_epi8(v[0], v[1]);
      const __m512i cd_lo = _mm512_unpacklo_epi8(v[2], v[3]), cd_hi = _mm512_unpackhi_epi8(v[2], v[3]);
      _mm512_store_si512(col + g * 256, _mm512_unpacklo_epi16(ab_lo, cd_lo));
      _mm512_store_si512(col + g * 256 + 64, _mm512_unpackhi_epi16(ab_lo, cd_lo));
      _mm512_store_si512(col + g * 256 + 128, _mm512_unpacklo_epi16(ab_hi, cd_hi));
      _mm512_store_si512(col + g * 256 + 192, _mm512_unpackhi_epi16(ab_hi, cd_hi));
    } else {
      __m256i v[4];
      for (int t = 0; t < 4; ++t) {
        const uint8_t* r = rows[g * 4 + t];
        v[t] = (in && r) ? _mm256_maskz_loadu_epi8(static_cast<__mmask32>(cm), r + off) : _mm512_castsi512_si256(zpv);
      }
      const __m256i ab_lo = _mm256_unpacklo_epi8(v[0], v[1]), ab_hi = _mm256_unpackhi_epi8(v[0], v[1]);
      const __m256i cd_lo = _mm256_unpacklo_epi8(v[2], v[3]), cd_hi = _mm256_unpackhi_epi8(v[2], v[3]);
      const __m512i z0 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_unpacklo_epi16(ab_lo, cd_lo)),
                                            _mm256_unpackhi_epi16(ab_lo, cd_lo), 1);
      const __m512i z1 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_unpacklo_epi16(ab_hi, cd_hi)),
                                            _mm256_unpackhi_epi16(ab_hi, cd_hi), 1);
      _mm512_store_si512(col + g * 128, z0);
      _mm512_store_si512(col + g * 128 + 64, z1);
    }
  }
}

template <int K, int S, int CB>
void dw_row(const DwArgs& a, int b, int oy, int blk, uint8_t* buf) {
  constexpr int NG = (K + 3) / 4, PAD = K / 2, NZ = CB / 16, COL = NG * CB * 4;
  const int c0 = blk * 64;
  const int nch = a.c - c0 >= 64 ? 64 : a.c - c0;
  const __mmask64 cm = nch == 64 ? ~__mmask64(0) : ((__mmask64(1) << nch) - 1);
  const __m512i zpv = _mm512_set1_epi8(static_cast<char>(a.in_zp));
  const uint8_t* rows[NG * 4];
  for (int t = 0; t < NG * 4; ++t) {
    const int iy = oy * S - PAD + t;
    rows[t] = (t < K && iy >= 0 && iy < a.h) ? dw_in_row(a, b, iy) + c0 : nullptr;
  }
  const int8_t* wb = a.dw_w + static_cast<int64_t>(blk) * K * NG * 256;
  const int32_t* init = a.dw_init + blk * 64;
  const float* scale = a.dw_scale + blk * 64;
  const Epi e(a.q);
  __m512i w[K][NG][NZ];
  for (int kx = 0; kx < K; ++kx)
    for (int g = 0; g < NG; ++g)
      for (int j = 0; j < NZ; ++j) w[kx][g][j] = _mm512_loadu_si512(wb + ((kx * NG + g) * 4 + j) * 64);
  for (int ox0 = 0; ox0 < a.wo; ox0 += kDwStrip) {
    const int ox1 = ox0 + kDwStrip < a.wo ? ox0 + kDwStrip : a.wo;
    const int ix0 = ox0 * S - PAD, ix1 = (ox1 - 1) * S - PAD + K;
    for (int ix = ix0; ix < ix1; ++ix)
      dw_column<NG, CB>(rows, ix >= 0 && ix < a.w, static_cast<int64_t>(ix) * a.c, cm, zpv, buf + (ix - ix0) * COL);
    int ox = ox0;
    for (; ox + 4 <= ox1; ox += 4) dw_out<K, S, 4, CB>(a, e, w, buf, ix0, b, oy, ox, c0, nch, cm, init, scale);
    for (; ox + 2 <= ox1; ox += 2) dw_out<K, S, 2, CB>(a, e, w, buf, ix0, b, oy, ox, c0, nch, cm, init, scale);
    if (ox < ox1) dw_out<K, S, 1, CB>(a, e, w, buf, ix0, b, oy, ox, c0, nch, cm, init, scale);
  }
}

template <int K, int S>
void dw_impl(const DwArgs& a, int threads) {
  const int nblk = (a.c + 63) / 64, rows = dw_rows(a);
  par(threads, a.batch * rows * nblk, [&](int t0, int t1) {
    alignas(64) uint8_t buf[((kDwStrip - 1) * S + K) * ((K + 3) / 4) * 256];
    for (int t = t0; t < t1; ++t) {
      const int r = t / nblk, blk = t % nblk;
      if (a.c - blk * 64 <= 32) dw_row<K, S, 32>(a, r / rows, a.oy0 + r % rows, blk, buf);
      else dw_row<K, S, 64>(a, r / rows, a.oy0 + r % rows, blk, buf);
    }
  });
}

}  // namespace

void depthwise(const DwArgs& a, int threads) {
  switch (a.k * 10 + a.stride) {
    case 31: dw_impl<3, 1>(a, threads); break;
    case 32: dw_impl<3, 2>(a, threads); break;
    case 51: dw_impl<5, 1>(a, threads); break;
    case 52: dw_impl<5, 2>(a, threads); break;
    case 71: dw_impl<7, 1>(a, threads); break;
    default: dw_impl<7, 2>(a, threads); break;
  }
}

void pool(const PoolArgs& a, int threads) {
  const int ncb = (a.c + 15) / 16;
  par(threads, a.batch * ncb, [&](int t0, int t1) {
    for (int t = t0; t < t1; ++t) {
      const int b = t / ncb, c = (t % ncb) * 16;
      const __mmask16 m = tail_mask(a.c - c);
      const uint8_t* x = a.x + static_cast<int64_t>(b) * a.hw * a.c + c;
      __m512i s = _mm512_setzero_si512();
      for (int p = 0; p < a.hw; ++p)
        s = _mm512_add_epi32(s, _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, x + static_cast<int64_t>(p) * a.c)));
      s = _mm512_sub_epi32(s, _mm512_set1_epi32(a.hw * a.in_zp));
      _mm_mask_storeu_epi8(a.out + b * a.c + c, m, _mm512_cvtepi32_epi8(scale_round(s, a.scale, a.out_zp)));
    }
  });
}

void channel_scale(const ScaleArgs& a, int threads) {
  const __m512i zpv = _mm512_set1_epi32(a.in_zp);
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
        _mm_mask_storeu_epi8(o + c, m, _mm512_cvtepi32_epi8(scale_round(_mm512_madd_epi16(xv, gv), a.scale, a.out_zp)));
      }
    }
  });
}

int64_t quantize_rgb(const float* x, int64_t hw, float scale, float zp, uint8_t* out) {
  __m128i mk[3][3];  // mk[o][ch]: bytes of output block o taken from channel ch (pixel index or -128 = zero)
  for (int o = 0; o < 3; ++o)
    for (int ch = 0; ch < 3; ++ch) {
      alignas(16) int8_t m[16];
      for (int i = 0; i < 16; ++i) m[i] = (16 * o + i) % 3 == ch ? static_cast<int8_t>((16 * o + i) / 3) : -128;
      mk[o][ch] = _mm_load_si128(reinterpret_cast<const __m128i*>(m));
    }
  const __m512 vs = _mm512_set1_ps(scale), vz = _mm512_set1_ps(zp);
  const __m512 lo = _mm512_set1_ps(-1e6f), hi = _mm512_set1_ps(1e6f), zero = _mm512_setzero_ps(),
               top = _mm512_set1_ps(255.0f);
  int64_t p = 0;
  for (; p + 16 <= hw; p += 16) {
    __m128i q[3];
    for (int ch = 0; ch < 3; ++ch) {
      __m512 v = _mm512_div_round_ps(_mm512_loadu_ps(x + ch * hw + p), vs, kRne);
      v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
      v = _mm512_add_round_ps(_mm512_roundscale_ps(v, kRne), vz, kRne);
      v = _mm512_min_ps(_mm512_max_ps(v, zero), top);
      q[ch] = _mm512_cvtepi32_epi8(_mm512_cvtt_roundps_epi32(v, _MM_FROUND_NO_EXC));
    }
    for (int o = 0; o < 3; ++o) {
      const __m128i r = _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(q[0], mk[o][0]), _mm_shuffle_epi8(q[1], mk[o][1])),
                                     _mm_shuffle_epi8(q[2], mk[o][2]));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 3 * p + 16 * o), r);
    }
  }
  return p;
}

namespace {

// One chunk of images of the depthwise weight gradient. For each output row and kernel row, every block of 16
// channels (mask m for the tail) runs over the row's columns with K taps in registers; the input and output
// rows stay in L1/L2 across the channel blocks, so memory is read once, in order. Interior columns (all K taps
// inside the input) run two at a time: 2K independent FMA chains hide the FMA latency.
template <int K>
void dw_grad_chunk(const DwGradArgs& a, int chunk) {
  const int C = a.c, s = a.stride, pad = a.pad;
  const int ox_lo = std::min(a.wo, (pad + s - 1) / s);
  const int ox_hi = std::max(ox_lo, std::min(a.wo, a.w - K + pad >= 0 ? (a.w - K + pad) / s + 1 : 0));
  float* p = a.partial + static_cast<int64_t>(chunk) * K * K * C;
  std::fill(p, p + static_cast<int64_t>(K) * K * C, 0.0f);
  const int n1 = std::min(a.batch, (chunk + 1) * kDwGradChunk);
  for (int n = chunk * kDwGradChunk; n < n1; ++n)
    for (int oy = 0; oy < a.ho; ++oy)
      for (int i = 0; i < K; ++i) {
        const int iy = oy * s + i - pad;
        if (iy < 0 || iy >= a.h) continue;
        for (int c0 = 0; c0 < C; c0 += 16) {
          const __mmask16 m = tail_mask(C - c0);
          const float* grow = a.g + ((static_cast<int64_t>(n) * a.ho + oy) * a.wo) * C + c0;
          const float* xrow = a.x + ((static_cast<int64_t>(n) * a.h + iy) * a.w) * C + c0;
          __m512 acc[K], acc2[K];
#pragma GCC unroll 16
          for (int j = 0; j < K; ++j) acc[j] = acc2[j] = _mm512_setzero_ps();
          // columns with a tap outside the input (at most K - 1 on each side)
          for (int e = 0; e < 2; ++e) {
            const int ox0 = e == 0 ? 0 : ox_hi, ox1 = e == 0 ? ox_lo : a.wo;
            for (int ox = ox0; ox < ox1; ++ox) {
              const __m512 gv = _mm512_maskz_loadu_ps(m, grow + static_cast<int64_t>(ox) * C);
#pragma GCC unroll 16
              for (int j = 0; j < K; ++j) {  // a tap outside the input loads zeros (mask 0, clamped address)
                const int ix = ox * s + j - pad;
                const __mmask16 mj = ix >= 0 && ix < a.w ? m : __mmask16(0);
                const int ixc = ix < 0 ? 0 : (ix >= a.w ? a.w - 1 : ix);
                acc[j] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mj, xrow + static_cast<int64_t>(ixc) * C), gv, acc[j]);
              }
            }
          }
          int ox = ox_lo;
          for (; ox + 1 < ox_hi; ox += 2) {
            const __m512 g0 = _mm512_maskz_loadu_ps(m, grow + static_cast<int64_t>(ox) * C);
            const __m512 g1 = _mm512_maskz_loadu_ps(m, grow + static_cast<int64_t>(ox + 1) * C);
            const float* x0 = xrow + static_cast<int64_t>(ox * s - pad) * C;
            const float* x1 = x0 + static_cast<int64_t>(s) * C;
#pragma GCC unroll 16
            for (int j = 0; j < K; ++j) {
              acc[j] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x0 + static_cast<int64_t>(j) * C), g0, acc[j]);
              acc2[j] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x1 + static_cast<int64_t>(j) * C), g1, acc2[j]);
            }
          }
          if (ox < ox_hi) {
            const __m512 gv = _mm512_maskz_loadu_ps(m, grow + static_cast<int64_t>(ox) * C);
            const float* x0 = xrow + static_cast<int64_t>(ox * s - pad) * C;
#pragma GCC unroll 16
            for (int j = 0; j < K; ++j)
              acc[j] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x0 + static_cast<int64_t>(j) * C), gv, acc[j]);
          }
          float* pi = p + static_cast<int64_t>(i) * K * C + c0;
#pragma GCC unroll 16
          for (int j = 0; j < K; ++j) {
            float* q = pi + static_cast<int64_t>(j) * C;
            _mm512_mask_storeu_ps(q, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, q), _mm512_add_ps(acc[j], acc2[j])));
          }
        }
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

}  // namespace avx512
}  // namespace nask

#pragma GCC pop_options

#endif  // x86-64
