// Shared declarations for the nas low-bit CPU kernels.
//
// Arithmetic (identical in every ISA path and in nas/kernels/reference.py):
//   activations: per-tensor asymmetric uint8, real = scale * (q - zero_point)
//   weights:     symmetric int8 (or int4 in [-7, 7]) per output channel, optional uint8
//                per-group sub-scales for int4 (integer, multiplied into the group partial sums)
//   bias:        int32 at scale in_scale * w_scale[c]
//   requant:     y = clamp(zp + rne(float32(acc + bias') * scale[c]), lo, hi) [-> lut[y]]
//                scale[c] = float32(M[c] * 2^(shift[c] - 31)); IEEE float32 multiply, round half to even
//   bias' = bias - in_zp * sum_k w[c, k] (zero-point correction folded at pack time).
#pragma once

#include <algorithm>
#include <cmath>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace nask {

constexpr int kResidualBits = 8;  // the residual-path multipliers carry 2^kResidualBits (divided out exactly)

// Float32 scale of a fixed-point multiplier: float32(M * 2^(shift - 31)) (exact in double, one RNE rounding).
inline float scale_of(int32_t m, int32_t shift) {
  return static_cast<float>(std::ldexp(static_cast<double>(m), shift - 31));
}

// Round half to even of a float already clamped to a small range (current rounding mode = nearest-even).
inline int32_t rne(float v) { return static_cast<int32_t>(std::nearbyint(v)); }

// Aligned, zero-initialised byte buffer.
struct AlignedBuf {
  std::unique_ptr<uint8_t[]> raw;
  uint8_t* ptr = nullptr;
  size_t size = 0;
  void resize(size_t n) {
    raw.reset(new uint8_t[n + 64]());
    ptr = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(raw.get()) + 63) & ~uintptr_t(63));
    size = n;
  }
  template <class T>
  T* as() const { return reinterpret_cast<T*>(ptr); }
};

// Requantization parameters for one op (per output channel). Owned by the op object; kernels see RqView.
//   v = float32(acc + bias[c]) * scale[c]                    (IEEE float32, round to nearest even)
//   v = v + float32(r - res_zp) * res_scale                  (residual only)
//   y = rne(min(max(v, flo), fhi)) + zp,  flo = lo - zp, fhi = hi - zp   [-> lut[y]]
struct RqView {
  const int32_t* bias;   // padded to a multiple of 64 channels
  const float* scale;    // padded to a multiple of 64 channels (0 in the padding)
  const int32_t* lut32;  // 256 entries or nullptr
  int32_t zp, lo, hi;
  float flo, fhi;
  bool residual;
  int32_t res_zp;
  float res_scale;
  bool out_int32;
  // |v| < 2^30 for every possible accumulator (checked at pack time): rne(v) cannot overflow int32, so vector
  // paths may clamp after the conversion (saturating packs + byte min/max), which gives the same bits.
  bool no_overflow;
};

// Scalar form of the epilogue (acc without bias); vector paths must produce the same value.
inline int32_t rq_apply(const RqView& q, int c, int32_t acc, int32_t res) {
  const int32_t a = static_cast<int32_t>(static_cast<uint32_t>(acc) + static_cast<uint32_t>(q.bias[c]));
  float v = static_cast<float>(a) * q.scale[c];
  if (q.residual) {
    const float r = static_cast<float>(res - q.res_zp) * q.res_scale;
    v = v + r;
  }
  v = v < q.flo ? q.flo : (v > q.fhi ? q.fhi : v);
  const int32_t y = rne(v) + q.zp;
  return q.lut32 ? q.lut32[y] : y;
}

struct Requant {
  int n = 0;
  std::vector<int32_t> bias, lut32;
  std::vector<float> scale;
  int32_t zp = 0, lo = 0, hi = 255;
  bool residual = false;
  int32_t res_zp = 0;
  float res_scale = 0.0f;
  bool out_int32 = false;
  bool no_overflow = false;

  void resize(int channels) {
    n = channels;
    const size_t np = static_cast<size_t>((channels + 63) / 64 * 64);
    bias.assign(np, 0);
    scale.assign(np, 0.0f);
  }
  // Sets no_overflow from per-channel bounds on |acc + bias| (the residual term adds at most 255 * res_scale).
  void check_overflow(const std::vector<int64_t>& acc_bound) {
    no_overflow = true;
    for (int c = 0; c < n; ++c) {
      const double v = static_cast<double>(acc_bound[c]) * scale[c] + (residual ? 255.0 * res_scale : 0.0);
      if (!(v < 1073741824.0 * 0.99)) no_overflow = false;
    }
  }
  RqView view() const {
    return RqView{bias.data(), scale.data(), lut32.empty() ? nullptr : lut32.data(), zp, lo, hi,
                  static_cast<float>(lo - zp), static_cast<float>(hi - zp), residual, res_zp, res_scale,
                  out_int32, no_overflow};
  }
};

// Weights of a GEMM (N outputs x K inputs) packed for one ISA.
struct PackedWeights {
  int n = 0, k = 0, bits = 8, group = 0, ngroups = 1;
  bool grouped = false;
  AlignedBuf w;     // layout depends on the ISA's packer and bits (see pack.h)
  AlignedBuf subs;  // int32 group sub-scales in the isa's layout (grouped only)
};

// Direct kxk convolution as a GEMM without im2col (AVX-512 path): GEMM row m = output pixel (b, oy, ox) reads,
// for each kernel row ky, seg4 bytes at pad + ((b * hp + oy * stride + ky) * wp + ox * stride) * cin of a
// zero-point padded input copy; the weights are packed as [N][k * seg4] with zeros past the k * cin real bytes.
struct ConvGeom {
  const uint8_t* pad = nullptr;
  int ho = 0, wo = 0, hp = 0, wp = 0, cin = 0, stride = 1, k = 1, seg4 = 4;
};

struct GemmArgs {
  int m = 0;
  const ConvGeom* conv = nullptr;  // set: rows are conv output pixels (x/ldx unused)
  const uint8_t* x = nullptr;
  int64_t ldx = 0;
  const PackedWeights* w = nullptr;
  RqView q{};
  void* out = nullptr;  // uint8 or int32 (q->out_int32)
  int64_t ldo = 0;
  const uint8_t* res = nullptr;
  int64_t ldr = 0;
};

struct DwArgs {
  int batch = 0, h = 0, w = 0, c = 0, k = 0, stride = 1, ho = 0, wo = 0;
  int32_t in_zp = 0;
  const uint8_t* x = nullptr;
  const int32_t* wt = nullptr;    // [k*k][cpad] int32, value w & 0xffff (reference)
  // AVX512-VNNI layout (see avx512.cpp), per block of 64 channels in the interleaved channel order:
  //   [C/64][k (kx)][ceil(k/4) (row group)][4 (zmm)][64 bytes]; avx2 and neon: int16 layouts of pack.h
  const int8_t* dw_w = nullptr;
  const int32_t* dw_init = nullptr;  // [C/64 * 64] (avx2: [cpad]) bias - in_zp * sum_taps w
  const float* dw_scale = nullptr;   // [C/64 * 64] requantization scales
  int cpad = 0;
  RqView q{};
  uint8_t* out = nullptr;
  // Row window (FusedBlock): output rows [oy0, oy1) of each image, read from an input that holds each image's rows
  // in a ring of `held` rows (row iy at slot iy % held, so a band's new rows overwrite the ones no longer read and
  // the rows kept for the next band are never moved); padding is still decided by the true height h, and `out`
  // holds only the window's rows. The defaults (oy1 = 0: ho, held = 0: all h rows in order) are the whole tensor.
  int oy0 = 0, oy1 = 0, held = 0;
};

// Output rows per image of a (windowed) depthwise call.
inline int dw_rows(const DwArgs& a) { return (a.oy1 ? a.oy1 : a.ho) - a.oy0; }
// Input row iy of image b (0 <= iy < h; with a ring, one of the `held` rows the window reads).
inline const uint8_t* dw_in_row(const DwArgs& a, int b, int iy) {
  return a.x + (static_cast<int64_t>(b) * (a.held ? a.held : a.h) + (a.held ? iy % a.held : iy)) * a.w * a.c;
}
// Output row oy of image b (oy0 <= oy < oy1).
inline uint8_t* dw_out_row(const DwArgs& a, int b, int oy) {
  return a.out + (static_cast<int64_t>(b) * dw_rows(a) + oy - a.oy0) * a.wo * a.c;
}

struct PoolArgs {  // out[n, c] = rne(clamp(float32(sum_p x - hw * in_zp) * scale, -zp, 255 - zp)) + zp
  int batch = 0, hw = 0, c = 0;
  int32_t in_zp = 0, out_zp = 0;
  float scale = 0.0f;
  const uint8_t* x = nullptr;
  uint8_t* out = nullptr;
};

struct ScaleArgs {  // out[n, p, c] = rne(clamp(float32((x - in_zp) * g[n, c]) * scale, -zp, 255 - zp)) + zp
  int batch = 0, hw = 0, c = 0;
  int32_t in_zp = 0, out_zp = 0;
  float scale = 0.0f;
  const uint8_t* x = nullptr;
  const uint8_t* gate = nullptr;
  uint8_t* out = nullptr;
};

// Float32 weight gradient of a depthwise convolution, for training (NHWC x and grad_out g):
//   out[i * k + j][c] = sum_{n, oy, ox} x[n, oy * stride + i - pad, ox * stride + j - pad, c] * g[n, oy, ox, c]
// (taps outside the input add nothing). Images are summed in fixed chunks of kDwGradChunk into `partial`
// ([chunks][k * k][c]), then the chunks are added in order, so the result does not depend on the thread count.
constexpr int kDwGradChunk = 8;

struct DwGradArgs {
  int batch = 0, h = 0, w = 0, c = 0, k = 0, stride = 1, pad = 0, ho = 0, wo = 0;
  const float* x = nullptr;
  const float* g = nullptr;
  float* partial = nullptr;
  float* out = nullptr;
};

// Adds the chunks of `partial` into `out` in chunk order (shared by every ISA path).
void dw_grad_reduce(const DwGradArgs& a);

// Thread pool: runs fn(ctx, begin, end) over contiguous equal chunks of [0, tasks), one per thread.
// Plain function pointer (no std::function) so ISA-specific translation units instantiate no shared
// library templates with their wider target flags.
void parallel_for_raw(int threads, int tasks, void (*fn)(void*, int, int), void* ctx);

// Runs fn(ctx, t, t + 1) for every t in [0, tasks) on `threads` threads started for this call (the caller is
// one), taking tasks in turn. For long jobs (training kernels, milliseconds): no shared adaptive back-off.
void parallel_for_fresh(int threads, int tasks, void (*fn)(void*, int, int), void* ctx);

template <class F>
void tramp(void* ctx, int b, int e) { (*static_cast<F*>(ctx))(b, e); }

template <class F>
inline void par(int threads, int tasks, F f) { parallel_for_raw(threads, tasks, &tramp<F>, &f); }

template <class F>
inline void par_fresh(int threads, int tasks, F f) { parallel_for_fresh(threads, tasks, &tramp<F>, &f); }

// The kernels every ISA's source file defines (its row in config.cpp points at them).
#define NASK_DECLARE_ISA(ns)                                   \
  namespace ns {                                               \
  void gemm(const GemmArgs& a, int threads);                   \
  void depthwise(const DwArgs& a, int threads);                \
  void pool(const PoolArgs& a, int threads);                   \
  void channel_scale(const ScaleArgs& a, int threads);         \
  void dw_weight_grad(const DwGradArgs& a, int threads);       \
  }

NASK_DECLARE_ISA(ref)
NASK_DECLARE_ISA(avx2)
NASK_DECLARE_ISA(avx512)
NASK_DECLARE_ISA(neon)

namespace neondot {  // the dot-product GEMM; its other table entries are neon::'s
void gemm(const GemmArgs& a, int threads);
}

// Input quantization, float32 NCHW -> uint8 NHWC: clamp(rne(clamp(x / scale, -1e6, 1e6)) + zp, 0, 255)
// (identical to quant.quantize_input). Scalar form for one value:
inline uint8_t quantize_value(float x, float scale, float zp) {
  float v = x / scale;
  v = v < -1e6f ? -1e6f : (v > 1e6f ? 1e6f : v);
  v = std::nearbyint(v) + zp;
  v = v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v);
  return static_cast<uint8_t>(static_cast<int32_t>(v));
}

// Fake quantization (training): per element, q = rne(x * inv_scale) + zp; out = (clamp(q, qmin, qmax) - zp) *
// scale and mask = (qmin <= q <= qmax), the formula of PyTorch's fake_quantize_per_tensor_affine_cachemask.
inline void fake_quant_value(float x, float scale, float inv_scale, float zp, float qmin, float qmax, float* out,
                             uint8_t* mask) {
  const float q = std::nearbyint(x * inv_scale) + zp;
  *mask = static_cast<uint8_t>(q >= qmin && q <= qmax);
  *out = ((q < qmin ? qmin : (q > qmax ? qmax : q)) - zp) * scale;
}

namespace avx2 {
// fake_quant_value over elements [0, n) of x; returns the first element not done (a multiple of 8)
int64_t fake_quant(const float* x, int64_t n, float scale, float inv_scale, float zp, float qmin, float qmax,
                   float* out, uint8_t* mask);
}

namespace avx512 {
// Planes of batch item b: pixels [p0, p1) of hw, C = 3, p0 a multiple of 16; returns the first pixel not done.
int64_t quantize_rgb(const float* x, int64_t hw, float scale, float zp, uint8_t* out);
}

}  // namespace nask
