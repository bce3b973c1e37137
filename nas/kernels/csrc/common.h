// Shared declarations for the nas low-bit CPU kernels.
//
// Arithmetic (identical in every ISA path and in nas/kernels/reference.py):
//   activations: per-tensor asymmetric uint8, real = scale * (q - zero_point)
//   weights:     symmetric int8 (or int4 in [-7, 7]) per output channel, optional uint8
//                per-group sub-scales for int4 (integer, multiplied into the group partial sums)
//   bias:        int32 at scale in_scale * w_scale[c]
//   requant:     y = clamp(zp + MulQ(acc + bias', M[c], shift[c]), lo, hi) [-> lut[y]]
//                MulQ(x, M, s) = RDBP(SRDHM(x << max(s, 0), M), max(-s, 0))  (gemmlowp / TFLite)
//   bias' = bias - in_zp * sum_k w[c, k] (zero-point correction folded at pack time).
#pragma once

#include <algorithm>
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

enum class Isa : int { reference = 0, avx2 = 1, avx512vnni = 2 };

constexpr int kResidualBits = 8;  // extra fraction bits used when a residual is added

// gemmlowp SaturatingRoundingDoublingHighMul.
inline int32_t srdhm(int32_t a, int32_t b) {
  if (a == INT32_MIN && b == INT32_MIN) return INT32_MAX;
  const int64_t ab = static_cast<int64_t>(a) * static_cast<int64_t>(b);
  const int64_t nudge = ab >= 0 ? (1ll << 30) : (1 - (1ll << 30));
  return static_cast<int32_t>((ab + nudge) / (1ll << 31));
}

// gemmlowp RoundingDivideByPOT (round half away from zero).
inline int32_t rdbp(int32_t x, int e) {
  const int32_t mask = static_cast<int32_t>((1ll << e) - 1);
  const int32_t rem = x & mask;
  const int32_t thr = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> e) + (rem > thr ? 1 : 0);
}

inline int32_t shl_wrap(int32_t x, int l) {
  return static_cast<int32_t>(static_cast<uint32_t>(x) << l);
}

inline int32_t mulq(int32_t x, int32_t m, int lsh, int rsh) {
  return rdbp(srdhm(shl_wrap(x, lsh), m), rsh);
}

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
struct RqView {
  const int32_t *bias, *mult, *lsh, *rsh, *rmask, *rhalf;  // padded to a multiple of 64 channels
  const int32_t* lut32;                                     // 256 entries or nullptr
  bool any_lsh;                                             // some channel has a left shift
  int32_t zp, lo, hi;
  bool residual;
  int32_t res_zp, res_mult, res_lsh, res_rsh;
  bool out_int32;
};

// Scalar form of the epilogue; vector paths must produce the same value.
inline int32_t rq_apply(const RqView& q, int c, int32_t acc, int32_t res) {
  int32_t v = mulq(acc + q.bias[c], q.mult[c], q.lsh[c], q.rsh[c]);
  if (q.residual) v = rdbp(v + mulq(res - q.res_zp, q.res_mult, q.res_lsh, q.res_rsh), kResidualBits);
  v += q.zp;
  v = v < q.lo ? q.lo : (v > q.hi ? q.hi : v);
  return q.lut32 ? q.lut32[v] : v;
}

struct Requant {
  int n = 0;
  std::vector<int32_t> bias, mult, lsh, rsh, rmask, rhalf, lut32;
  int32_t zp = 0, lo = 0, hi = 255;
  bool residual = false;
  int32_t res_zp = 0, res_mult = 0, res_lsh = 0, res_rsh = 0;
  bool out_int32 = false;

  void resize(int channels) {
    n = channels;
    const size_t np = static_cast<size_t>((channels + 63) / 64 * 64);
    bias.assign(np, 0);
    mult.assign(np, 1 << 30);
    lsh.assign(np, 0);
    rsh.assign(np, 0);
    rmask.assign(np, 0);
    rhalf.assign(np, 0);
  }
  void set_channel(int c, int32_t m, int32_t shift) {
    mult[c] = m;
    lsh[c] = shift > 0 ? shift : 0;
    rsh[c] = shift > 0 ? 0 : -shift;
    rmask[c] = static_cast<int32_t>((1ll << rsh[c]) - 1);
    rhalf[c] = rmask[c] >> 1;
  }
  RqView view() const {
    return RqView{bias.data(), mult.data(), lsh.data(), rsh.data(), rmask.data(), rhalf.data(),
                  lut32.empty() ? nullptr : lut32.data(),
                  std::any_of(lsh.begin(), lsh.end(), [](int32_t v) { return v != 0; }), zp, lo, hi, residual, res_zp, res_mult,
                  res_lsh, res_rsh, out_int32};
  }
};

// Weights of a GEMM (N outputs x K inputs) packed for one ISA.
struct PackedWeights {
  Isa isa = Isa::reference;
  int n = 0, k = 0, bits = 8, group = 0, ngroups = 1;
  bool grouped = false;
  AlignedBuf w;     // layout depends on isa/bits (see pack.cpp)
  AlignedBuf subs;  // int32 group sub-scales in the isa's layout (grouped only)
};

struct GemmArgs {
  int m = 0;
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
  const int32_t* wt = nullptr;      // [k*k][cpad] int32, value w & 0xffff (pairs for vpmaddwd)
  const int32_t* neg_wzp = nullptr;  // [cpad] -in_zp * sum_taps w (zero-point correction, VNNI path)
  int cpad = 0;
  RqView q{};
  uint8_t* out = nullptr;
};

struct PoolArgs {
  int batch = 0, hw = 0, c = 0;
  int32_t in_zp = 0, mult = 0, lsh = 0, rsh = 0, out_zp = 0;
  const uint8_t* x = nullptr;
  uint8_t* out = nullptr;
};

struct ScaleArgs {  // out[n, p, c] = clamp(zp + MulQ((x - xzp) * g[n, c], M, s))
  int batch = 0, hw = 0, c = 0;
  int32_t in_zp = 0, mult = 0, lsh = 0, rsh = 0, out_zp = 0;
  const uint8_t* x = nullptr;
  const uint8_t* gate = nullptr;
  uint8_t* out = nullptr;
};

// Thread pool: runs fn(ctx, begin, end) over contiguous equal chunks of [0, tasks), one per thread.
// Plain function pointer (no std::function) so ISA-specific translation units instantiate no shared
// library templates with their wider target flags.
void parallel_for_raw(int threads, int tasks, void (*fn)(void*, int, int), void* ctx);

template <class F>
void tramp(void* ctx, int b, int e) { (*static_cast<F*>(ctx))(b, e); }

template <class F>
inline void par(int threads, int tasks, F f) { parallel_for_raw(threads, tasks, &tramp<F>, &f); }

#define NASK_DECLARE_ISA(ns)                                   \
  namespace ns {                                               \
  void gemm(const GemmArgs& a, int threads);                   \
  void depthwise(const DwArgs& a, int threads);                \
  void pool(const PoolArgs& a, int threads);                   \
  void channel_scale(const ScaleArgs& a, int threads);         \
  }

NASK_DECLARE_ISA(ref)
NASK_DECLARE_ISA(avx2)
NASK_DECLARE_ISA(avx512)

namespace avx512 {
int64_t vnni_loop(int64_t iters);  // 12 independent vpdpbusd chains x iters; returns a checksum
}

}  // namespace nask
