// Portable scalar reference kernels (plain loops, no intrinsics).
#include "common.h"

namespace nask {
namespace ref {
namespace {

// rne(clamp(float32(v) * scale, -zp, 255 - zp)) + zp
inline int32_t scale_round(int32_t v, float scale, int32_t zp) {
  float f = static_cast<float>(v) * scale;
  const float lo = static_cast<float>(-zp), hi = static_cast<float>(255 - zp);
  f = f < lo ? lo : (f > hi ? hi : f);
  return rne(f) + zp;
}

}  // namespace

void gemm(const GemmArgs& a, int threads) {
  const PackedWeights& pw = *a.w;
  const RqView& q = a.q;
  const int n = pw.n, k = pw.k;
  const int8_t* w = pw.w.as<int8_t>();
  const int32_t* subs = pw.subs.as<int32_t>();
  par(threads, a.m, [&](int m0, int m1) {
    for (int m = m0; m < m1; ++m) {
      const uint8_t* x = a.x + m * a.ldx;
      for (int j = 0; j < n; ++j) {
        const int8_t* wj = w + static_cast<int64_t>(j) * k;
        int32_t acc = 0;
        if (pw.grouped) {
          for (int g = 0; g < pw.ngroups; ++g) {
            int32_t part = 0;
            const int kb = g * pw.group, ke = std::min(k, kb + pw.group);
            for (int i = kb; i < ke; ++i) part += static_cast<int32_t>(x[i]) * wj[i];
            acc += part * subs[j * pw.ngroups + g];
          }
        } else {
          for (int i = 0; i < k; ++i) acc += static_cast<int32_t>(x[i]) * wj[i];
        }
        if (q.out_int32) {
          static_cast<int32_t*>(a.out)[m * a.ldo + j] = acc + q.bias[j];
        } else {
          const int32_t r = q.residual ? a.res[m * a.ldr + j] : 0;
          static_cast<uint8_t*>(a.out)[m * a.ldo + j] = static_cast<uint8_t>(rq_apply(q, j, acc, r));
        }
      }
    }
  });
}

void depthwise(const DwArgs& a, int threads) {
  const int pad = a.k / 2;
  const int rows = dw_rows(a);
  par(threads, a.batch * rows, [&](int r0, int r1) {
    for (int r = r0; r < r1; ++r) {
      const int b = r / rows, oy = a.oy0 + r % rows;
      for (int ox = 0; ox < a.wo; ++ox) {
        uint8_t* o = dw_out_row(a, b, oy) + static_cast<int64_t>(ox) * a.c;
        for (int c = 0; c < a.c; ++c) {
          int32_t acc = 0;
          for (int ky = 0; ky < a.k; ++ky) {
            const int iy = oy * a.stride + ky - pad;
            if (iy < 0 || iy >= a.h) continue;
            for (int kx = 0; kx < a.k; ++kx) {
              const int ix = ox * a.stride + kx - pad;
              if (ix < 0 || ix >= a.w) continue;
              const int32_t xv = dw_in_row(a, b, iy)[static_cast<int64_t>(ix) * a.c + c];
              const int32_t wv = static_cast<int16_t>(a.wt[(ky * a.k + kx) * a.cpad + c] & 0xffff);
              acc += (xv - a.in_zp) * wv;
            }
          }
          o[c] = static_cast<uint8_t>(rq_apply(a.q, c, acc, 0));
        }
      }
    }
  });
}

void pool(const PoolArgs& a, int threads) {
  par(threads, a.batch, [&](int b0, int b1) {
    for (int b = b0; b < b1; ++b) {
      for (int c = 0; c < a.c; ++c) {
        int32_t s = 0;
        for (int p = 0; p < a.hw; ++p) s += a.x[(static_cast<int64_t>(b) * a.hw + p) * a.c + c];
        a.out[b * a.c + c] = static_cast<uint8_t>(scale_round(s - a.hw * a.in_zp, a.scale, a.out_zp));
      }
    }
  });
}

void channel_scale(const ScaleArgs& a, int threads) {
  par(threads, a.batch * a.hw, [&](int p0, int p1) {
    for (int p = p0; p < p1; ++p) {
      const int b = p / a.hw;
      const uint8_t* x = a.x + static_cast<int64_t>(p) * a.c;
      uint8_t* o = a.out + static_cast<int64_t>(p) * a.c;
      const uint8_t* g = a.gate + static_cast<int64_t>(b) * a.c;
      for (int c = 0; c < a.c; ++c) {
        o[c] = static_cast<uint8_t>(scale_round((x[c] - a.in_zp) * static_cast<int32_t>(g[c]), a.scale, a.out_zp));
      }
    }
  });
}

void dw_weight_grad(const DwGradArgs& a, int threads) {
  const int kk = a.k * a.k, C = a.c;
  const int chunks = (a.batch + kDwGradChunk - 1) / kDwGradChunk;
  par_fresh(threads, chunks, [&](int b0, int b1) {
    for (int ch = b0; ch < b1; ++ch) {
      float* p = a.partial + static_cast<int64_t>(ch) * kk * C;
      std::fill(p, p + static_cast<int64_t>(kk) * C, 0.0f);
      const int n1 = std::min(a.batch, (ch + 1) * kDwGradChunk);
      for (int n = ch * kDwGradChunk; n < n1; ++n)
        for (int oy = 0; oy < a.ho; ++oy)
          for (int i = 0; i < a.k; ++i) {
            const int iy = oy * a.stride + i - a.pad;
            if (iy < 0 || iy >= a.h) continue;
            for (int ox = 0; ox < a.wo; ++ox) {
              const float* g = a.g + ((static_cast<int64_t>(n) * a.ho + oy) * a.wo + ox) * C;
              for (int j = 0; j < a.k; ++j) {
                const int ix = ox * a.stride + j - a.pad;
                if (ix < 0 || ix >= a.w) continue;
                const float* x = a.x + ((static_cast<int64_t>(n) * a.h + iy) * a.w + ix) * C;
                float* o = p + static_cast<int64_t>(i * a.k + j) * C;
                for (int c = 0; c < C; ++c) o[c] += x[c] * g[c];
              }
            }
          }
    }
  });
  dw_grad_reduce(a);
}

}  // namespace ref

void dw_grad_reduce(const DwGradArgs& a) {  // a few thousand adds per chunk: not worth a thread
  const int64_t total = static_cast<int64_t>(a.k) * a.k * a.c;
  const int chunks = (a.batch + kDwGradChunk - 1) / kDwGradChunk;
  for (int64_t e = 0; e < total; ++e) {
    float s = 0.0f;
    for (int ch = 0; ch < chunks; ++ch) s += a.partial[ch * total + e];
    a.out[e] = s;
  }
}

}  // namespace nask
