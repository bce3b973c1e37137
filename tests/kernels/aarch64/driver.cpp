// Bit-exactness driver for the AArch64 kernel paths, built with a cross compiler and run under qemu-user by
// tests/kernels/test_aarch64.py. Every op is built through ops.h (the production packing and call path) for the
// portable reference ISA and for each ARM ISA this CPU supports, run on the same random inputs, and the outputs
// are compared byte for byte; the shapes follow tests/kernels/test_ops_bitexact.py (and test_fused.py).
//
// Usage: driver EXPECTED_BEST   (the ISA the CPU's features should select, e.g. neondot under -cpu max)
// Prints one summary line per op family; exit status 0 only when every output matched and the choice is right.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "ops.h"

using namespace nask;

namespace {

const char* const kActs[] = {"none", "relu", "relu6", "hswish", "swish"};

struct Rng {
  std::mt19937_64 g;
  explicit Rng(uint64_t seed) : g(seed) {}
  int integer(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(g); }  // [lo, hi]
  double real(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(g); }
  template <class T>
  T pick(const std::vector<T>& v) { return v[static_cast<size_t>(integer(0, static_cast<int>(v.size()) - 1))]; }
  std::vector<uint8_t> bytes(size_t n) {
    std::vector<uint8_t> v(n);
    for (auto& b : v) b = static_cast<uint8_t>(integer(0, 255));
    return v;
  }
  std::vector<int8_t> weights(size_t n, int lim) {
    std::vector<int8_t> v(n);
    for (auto& b : v) b = static_cast<int8_t>(integer(-lim, lim));
    return v;
  }
  std::vector<int32_t> ints(size_t n, int lo, int hi) {
    std::vector<int32_t> v(n);
    for (auto& b : v) b = integer(lo, hi);
    return v;
  }
};

// TFLite QuantizeMultiplier (nas.kernels.quant.quantize_multiplier): real = m * 2^(shift - 31).
void quantize_multiplier(double real, int32_t* m, int32_t* shift) {
  int e = 0;
  const double f = std::frexp(real, &e);
  int64_t q = std::llround(f * 2147483648.0);
  if (q == (1ll << 31)) {
    q /= 2;
    ++e;
  }
  *m = static_cast<int32_t>(q);
  *shift = e;
}

// Owns the arrays a RequantParams points at.
struct RequantData {
  std::vector<int32_t> m, s;
  std::vector<uint8_t> lut;
  int zp = 0, lo = 0, hi = 255;
  RequantParams params() const {
    RequantParams p;
    p.multiplier = m.data();
    p.shift = s.data();
    p.out_zp = zp;
    p.act_min = lo;
    p.act_max = hi;
    p.lut = lut.empty() ? nullptr : lut.data();
    return p;
  }
};

// nas.kernels.quant.make_lut: pre-activation grid (8 / 255, zp 128) -> activated grid (scale 0.03, zp out_zp).
std::vector<uint8_t> make_lut(const std::string& act, int out_zp) {
  std::vector<uint8_t> t(256);
  for (int i = 0; i < 256; ++i) {
    const double v = 8.0 / 255.0 * (i - 128);
    const double y = act == "hswish" ? v * std::fmin(std::fmax(v + 3.0, 0.0), 6.0) / 6.0 : v / (1.0 + std::exp(-v));
    t[i] = static_cast<uint8_t>(std::fmin(std::fmax(std::nearbyint(y / 0.03) + out_zp, 0.0), 255.0));
  }
  return t;
}

// nas.kernels.random_specs.random_requant: multipliers mapping a typical accumulator to ~40 LSB; `scale_by`
// multiplies them (2^8 for residual GEMMs, whose multipliers carry 2^kResidualBits).
RequantData random_requant(Rng& rng, int n, double fan_in, const std::string& act, int wmax, double scale_by = 1.0) {
  RequantData r;
  const double typical = std::sqrt(fan_in) * 74.0 * wmax / 2.0;
  r.m.resize(n);
  r.s.resize(n);
  for (int c = 0; c < n; ++c) quantize_multiplier(rng.real(0.3, 3.0) * 40.0 / typical * scale_by, &r.m[c], &r.s[c]);
  r.zp = rng.integer(0, 255);
  if (act == "hswish" || act == "swish") {
    r.zp = 128;
    r.lut = make_lut(act, rng.integer(0, 63));
  } else if (act == "relu") {
    r.lo = r.zp;
  } else if (act == "relu6") {
    r.lo = r.zp;
    r.hi = static_cast<int>(std::fmin(255.0, r.zp + std::nearbyint(6.0 / rng.real(0.02, 0.1))));
  }
  return r;
}

struct GemmData {
  std::vector<int8_t> w;
  std::vector<int32_t> bias, subs;
  RequantData rq;
  GemmParams p;
  void finish() {  // points p at the arrays (after they are final)
    p.weight = w.data();
    p.bias = bias.data();
    p.sub_scales = subs.empty() ? nullptr : subs.data();
    p.requant = rq.params();
  }
};

GemmData random_gemm(Rng& rng, int n, int k, int bits, int group, const std::string& act, bool residual,
                     bool out_int32) {
  GemmData d;
  const int wmax = bits == 8 ? 127 : 7;
  d.w = rng.weights(static_cast<size_t>(n) * k, wmax);
  double fan = k;
  if (group) {
    d.subs = rng.ints(static_cast<size_t>(n) * ((k + group - 1) / group), 1, 255);
    fan = k * 128.0 * 128.0;
  }
  d.rq = random_requant(rng, n, fan, act, wmax, residual ? 256.0 : 1.0);
  if (residual) {
    ResidualParams r;
    r.zp = rng.integer(0, 255);
    quantize_multiplier(rng.real(0.5, 2.0) * 256.0, &r.multiplier, &r.shift);
    d.p.residual = r;
  }
  d.bias = rng.ints(static_cast<size_t>(n), -20000, 19999);
  d.p.n = n;
  d.p.k = k;
  d.p.in_zp = rng.integer(0, 255);
  d.p.bits = bits;
  d.p.group_size = group;
  d.p.sub_groups = group ? (k + group - 1) / group : 0;
  d.p.out_int32 = out_int32;
  d.finish();
  return d;
}

// ---------------------------------------------------------------- comparison
struct Family {
  std::string name;
  int cases = 0, mismatches = 0;
  int64_t values = 0;
};

std::vector<std::string> g_isas;  // the ARM ISAs this CPU runs

bool same_bytes(Family& f, const std::string& isa, const std::string& what, const void* a, const void* b,
                size_t bytes, const char* want_name = "reference") {
  if (std::memcmp(a, b, bytes) == 0) return true;
  const uint8_t* x = static_cast<const uint8_t*>(a);
  const uint8_t* y = static_cast<const uint8_t*>(b);
  size_t i = 0;
  while (x[i] == y[i]) ++i;
  std::printf("MISMATCH %s on %s: %s: byte %zu: %s %d, %s %d\n", f.name.c_str(), isa.c_str(), what.c_str(), i,
              want_name, x[i], isa.c_str(), y[i]);
  ++f.mismatches;
  return false;
}

// run(isa, out) builds the op for `isa` and writes out_bytes bytes to out; every ARM ISA's must equal the reference's.
template <class Run>
void compare(Family& f, const std::string& what, size_t out_bytes, Run run) {
  std::vector<uint8_t> want(out_bytes, 0xA5);
  run(std::string("reference"), want.data());
  for (const std::string& isa : g_isas) {
    std::vector<uint8_t> got(out_bytes, 0x5A);
    run(isa, got.data());
    same_bytes(f, isa, what, want.data(), got.data(), out_bytes);
  }
  ++f.cases;
  f.values += static_cast<int64_t>(out_bytes);
}

void check_gemm(Family& f, GemmData& d, int m, Rng& rng, int threads) {
  const std::vector<uint8_t> x = rng.bytes(static_cast<size_t>(m) * d.p.k);
  const std::vector<uint8_t> res = rng.bytes(static_cast<size_t>(m) * d.p.n);
  const size_t esz = d.p.out_int32 ? 4 : 1;
  const std::string what = "gemm n=" + std::to_string(d.p.n) + " k=" + std::to_string(d.p.k) + " m=" +
                           std::to_string(m) + " bits=" + std::to_string(d.p.bits) + " group=" +
                           std::to_string(d.p.group_size) + (d.p.residual ? " residual" : "") +
                           (d.p.out_int32 ? " int32" : "") + (d.rq.lut.empty() ? "" : " lut");
  compare(f, what, static_cast<size_t>(m) * d.p.n * esz, [&](const std::string& isa, uint8_t* out) {
    d.p.isa = isa;
    const Gemm op(d.p);
    op.task(x.data(), m, out, d.p.residual ? res.data() : nullptr)(threads);
  });
}

// ---------------------------------------------------------------- op families
void gemm_random_shapes(Family& f) {
  Rng rng(10);
  const std::vector<int> ns = {1, 3, 8, 15, 16, 17, 24, 33, 63, 64, 65, 90, 96, 100, 160};
  const std::vector<int> ks = {1, 2, 3, 4, 5, 7, 16, 27, 31, 64, 97};
  for (int trial = 0; trial < 150; ++trial) {
    const int n = rng.pick(ns), k = rng.pick(ks), bits = rng.pick(std::vector<int>{8, 4});
    const int group = bits == 4 ? rng.pick(std::vector<int>{0, 4, 8, 32}) : 0;
    GemmData d = random_gemm(rng, n, k, bits, group, kActs[trial % 5], trial % 3 == 0, false);
    const int m = rng.integer(1, 2) * rng.integer(1, 5) * rng.integer(1, 5);
    check_gemm(f, d, m, rng, 1 + trial % 2);
  }
}

void gemm_many_rows(Family& f) {  // every register tile and row block, 2 threads
  Rng rng(19);
  for (int n : {16, 24, 40, 64, 96, 144, 160})
    for (auto [bits, group] : {std::pair{8, 0}, std::pair{4, 0}, std::pair{4, 32}}) {
      GemmData d = random_gemm(rng, n, 40, bits, group, "relu6", n % 3 == 0, false);
      check_gemm(f, d, 2 * 7 * 9, rng, 2);
    }
  GemmData big = random_gemm(rng, 48, 300, 8, 0, "none", false, false);  // K past the unrolled 16-byte steps
  check_gemm(f, big, 37, rng, 3);
  GemmData big4 = random_gemm(rng, 33, 301, 4, 12, "hswish", true, false);  // groups not a multiple of 16 bytes
  check_gemm(f, big4, 37, rng, 3);
}

void gemm_int32_logits(Family& f) {
  Rng rng(11);
  for (auto [n, k, b] : {std::tuple{10, 64, 1}, std::tuple{1000, 96, 2}, std::tuple{17, 5, 3}})
    for (int bits : {8, 4}) {
      GemmData d = random_gemm(rng, n, k, bits, 0, "none", false, true);
      check_gemm(f, d, b, rng, 1);
    }
  GemmData d = random_gemm(rng, 40, 64, 4, 8, "none", false, true);  // grouped int4 logits
  check_gemm(f, d, 3, rng, 1);
}

// acc * 0.5 and * 0.25 are exact ties (round half to even); |acc + bias| > 2^24 exercises the int32 -> float32
// rounding; shift 30 pushes |v| past int32 (the clamp comes before the conversion).
void requant_ties(Family& f) {
  Rng rng(18);
  const int n = 72, k = 4;
  const int cases[][3] = {{1 << 30, 0, 300}, {1 << 30, -1, 600}, {1 << 30, -24, 1 << 28}, {1 << 30, -23, 0},
                          {1 << 30, 30, 300}};
  for (const auto& c : cases)
    for (auto [lo, hi] : {std::pair{0, 255}, std::pair{37, 200}}) {
      GemmData d;
      d.w.assign(static_cast<size_t>(n) * k, 0);
      for (int j = 0; j < n; ++j) d.w[static_cast<size_t>(j) * k] = 1;  // acc = x[0] - in_zp
      d.bias = rng.ints(n, -c[2], c[2]);
      d.rq.m.assign(n, c[0]);
      d.rq.s.assign(n, c[1]);
      d.rq.zp = 131;
      d.rq.lo = lo;
      d.rq.hi = hi;
      d.p.n = n;
      d.p.k = k;
      d.p.in_zp = 128;
      d.finish();
      check_gemm(f, d, 21, rng, 1);
    }
}

// The float32 epilogue against the driver's own arithmetic, so that a contraction into fused multiply-add in the
// reference and the NEON path alike is caught too. v = float32(a) * s + float32(r - res_zp) * rs, with one product
// exact and the other 1.5e-6 (4e-7) past a tie, which rounds away as two float32 operations (-> even) but not
// fused (-> away from even):
//   main:     s = float32(0.1), a = 1005, rs = 1, r - res_zp = -100:   a * s = 100.5000015 -> 100.5, v = 0.5
//   residual: s = 1, a = 25, rs = float32(0.1), r - res_zp = -255:     r * rs = -25.5000004 -> -25.5, v = -0.5
void epilogue_unfused(Family& f) {
  struct Case { const char* name; double scale; ResidualParams res; int a, res_zp, r; };
  const Case cases[] = {{"main product inexact", 25.6, {200, 1 << 30, 9}, 1005, 200, 100},
                        {"residual product inexact", 256.0, {255, 0, 0}, 25, 255, 0}};
  for (const Case& c : cases) {
    const int n = 16, m = 63;
    GemmData d;
    d.w.assign(n, 1);  // k = 1: acc = x - 128
    d.bias.assign(n, c.a);
    d.rq.m.resize(n);
    d.rq.s.resize(n);
    // the multipliers carry 2^8 (kResidualBits); channel j > 0 nudges the scale off the constructed tie
    for (int j = 0; j < n; ++j) quantize_multiplier(c.scale * (1.0 + j / 4096.0), &d.rq.m[j], &d.rq.s[j]);
    d.rq.zp = 100;
    d.p.n = n;
    d.p.k = 1;
    d.p.in_zp = 128;
    d.p.residual = c.res;
    if (c.res.multiplier == 0) quantize_multiplier(25.6, &d.p.residual->multiplier, &d.p.residual->shift);
    d.finish();
    const float rs = std::ldexp(static_cast<float>(std::ldexp(static_cast<double>(d.p.residual->multiplier),
                                                              d.p.residual->shift - 31)), -8);
    std::vector<uint8_t> x(m), res(static_cast<size_t>(m) * n);
    for (int r = 0; r < m; ++r) {
      x[r] = static_cast<uint8_t>(128 + r % 5 - 2);
      for (int j = 0; j < n; ++j) res[static_cast<size_t>(r) * n + j] = static_cast<uint8_t>(c.r + (r % 7 == 3));
    }
    std::vector<uint8_t> want(static_cast<size_t>(m) * n);
    int fused_differs = 0;
    const auto quant = [](float t) {
      return static_cast<uint8_t>(std::nearbyint(std::fmin(std::fmax(t, -100.0f), 155.0f)) + 100);
    };
    for (int r = 0; r < m; ++r)
      for (int j = 0; j < n; ++j) {
        const float s = std::ldexp(static_cast<float>(std::ldexp(static_cast<double>(d.rq.m[j]), d.rq.s[j] - 31)), -8);
        const float a = static_cast<float>(x[r] - 128 + c.a);
        const float rv = static_cast<float>(res[static_cast<size_t>(r) * n + j] - c.res_zp);
        volatile float p1 = a * s, p2 = rv * rs;  // volatile: each product rounded to float32 on its own
        want[static_cast<size_t>(r) * n + j] = quant(p1 + p2);
        fused_differs += quant(std::fma(a, s, p2)) != quant(p1 + p2) || quant(std::fma(rv, rs, p1)) != quant(p1 + p2);
      }
    if (fused_differs == 0) {
      std::printf("FAIL: epilogue_unfused %s: no value tells a fused multiply-add apart\n", c.name);
      ++f.mismatches;
    }
    std::vector<std::string> all = {"reference"};
    all.insert(all.end(), g_isas.begin(), g_isas.end());
    for (const std::string& isa : all) {
      std::vector<uint8_t> got(want.size(), 0x5A);
      d.p.isa = isa;
      const Gemm op(d.p);
      op.task(x.data(), m, got.data(), res.data())(1);
      same_bytes(f, isa, std::string("unfused epilogue, ") + c.name + " (want: the driver's own arithmetic)",
                 want.data(), got.data(), want.size(), "driver");
    }
    ++f.cases;
    f.values += static_cast<int64_t>(want.size());
  }
}

void depthwise_random_shapes(Family& f) {
  Rng rng(12);
  const std::vector<int> cs = {1, 3, 8, 15, 16, 17, 31, 40, 72};
  for (int trial = 0; trial < 90; ++trial) {
    const int k = 3 + 2 * (trial % 3), stride = 1 + (trial / 3) % 2, c = rng.pick(cs);
    const int h = rng.integer(1, 11), w = rng.integer(1, 11), b = rng.integer(1, 2);
    const std::string act = kActs[trial % 5];
    std::vector<int8_t> wt = rng.weights(static_cast<size_t>(c) * k * k, 127);
    std::vector<int32_t> bias = rng.ints(c, -5000, 4999);
    // every 15th trial: scales 2^29 and 2^-9, past the no-overflow bound (the clamp comes before the conversion)
    RequantData rq = random_requant(rng, c, k * k, act, 127);
    if (trial % 15 >= 13) {
      rq.m.assign(c, 1 << 30);
      rq.s.assign(c, trial % 15 == 14 ? 30 : -8);
    }
    DepthwiseParams p;
    p.weight = wt.data();
    p.c = c;
    p.kh = p.kw = k;
    p.stride = stride;
    p.bias = bias.data();
    p.in_zp = rng.integer(0, 255);
    p.requant = rq.params();
    const std::vector<uint8_t> x = rng.bytes(static_cast<size_t>(b) * h * w * c);
    const int ho = (h - 1) / stride + 1, wo = (w - 1) / stride + 1;
    const std::string what = "depthwise k=" + std::to_string(k) + " s=" + std::to_string(stride) + " c=" +
                             std::to_string(c) + " " + std::to_string(b) + "x" + std::to_string(h) + "x" +
                             std::to_string(w) + " " + act;
    compare(f, what, static_cast<size_t>(b) * ho * wo * c, [&](const std::string& isa, uint8_t* out) {
      p.isa = isa;
      const Depthwise op(p);
      op.task(x.data(), b, h, w, out)(1 + trial % 3);
    });
  }
}

struct DwData {
  std::vector<int8_t> w;
  std::vector<int32_t> bias;
  RequantData rq;
  DepthwiseParams p;
};

DwData random_dw(Rng& rng, int c, int k, int stride, const std::string& act) {
  DwData d;
  d.w = rng.weights(static_cast<size_t>(c) * k * k, 127);
  d.bias = rng.ints(c, -5000, 4999);
  d.rq = random_requant(rng, c, k * k, act, 127);
  d.p.weight = d.w.data();
  d.p.c = c;
  d.p.kh = d.p.kw = k;
  d.p.stride = stride;
  d.p.bias = d.bias.data();
  d.p.in_zp = rng.integer(0, 255);
  d.p.requant = d.rq.params();
  return d;
}

// Row windows (Depthwise::run_rows, what FusedBlock calls): output rows [oy0, oy1) of one image from a ring of
// `held` rows (row iy at slot iy % held, the other slots garbage) holding the input rows they read; every ISA's
// window must equal the reference's whole-image rows.
void depthwise_row_windows(Family& f) {
  Rng rng(22);
  for (int trial = 0; trial < 60; ++trial) {
    const int k = 3 + 2 * (trial % 3), stride = 1 + (trial / 3) % 2, c = rng.pick(std::vector<int>{1, 8, 17, 40});
    const int h = rng.integer(1, 13), w = rng.integer(1, 11), ho = (h - 1) / stride + 1, wo = (w - 1) / stride + 1;
    const int oy0 = rng.integer(0, ho - 1), oy1 = rng.integer(oy0 + 1, ho), pad = k / 2;
    const int lo = std::max(0, oy0 * stride - pad), hi = std::min(h, (oy1 - 1) * stride - pad + k);
    DwData d = random_dw(rng, c, k, stride, kActs[trial % 5]);
    const std::vector<uint8_t> x = rng.bytes(static_cast<size_t>(h) * w * c);
    const size_t in_row = static_cast<size_t>(w) * c;
    const int cap = std::min(h, hi - lo + rng.integer(0, 2));  // ring slots: at least the rows read
    std::vector<uint8_t> held = rng.bytes(static_cast<size_t>(cap) * in_row);
    for (int iy = lo; iy < hi; ++iy)
      std::copy(x.begin() + iy * in_row, x.begin() + (iy + 1) * in_row, held.begin() + (iy % cap) * in_row);
    const size_t row = static_cast<size_t>(wo) * c;
    std::vector<uint8_t> whole(static_cast<size_t>(ho) * row);
    d.p.isa = "reference";
    Depthwise(d.p).task(x.data(), 1, h, w, whole.data())(1);
    const std::string what = "dw window k=" + std::to_string(k) + " s=" + std::to_string(stride) + " " +
                             std::to_string(h) + "x" + std::to_string(w) + " rows " + std::to_string(oy0) + ".." +
                             std::to_string(oy1) + " held " + std::to_string(lo) + ".." + std::to_string(hi) +
                             " in a ring of " + std::to_string(cap);
    compare(f, what, (oy1 - oy0) * row, [&](const std::string& isa, uint8_t* out) {
      d.p.isa = isa;
      Depthwise(d.p).run_rows(held.data(), h, w, cap, oy0, oy1, out, 1);
      if (isa == "reference")
        same_bytes(f, isa, what + " (whole image)", whole.data() + oy0 * row, out, (oy1 - oy0) * row, "whole");
    });
  }
}

// Fused inverted-residual blocks on each ARM ISA against the reference ISA's layers run one by one: odd sizes,
// stride 2, k 3/5/7, expand ratio 1, int8 and W4A8, residual or not, bands of 1-3 rows or automatic, 1-3 threads.
void fused_blocks(Family& f) {
  Rng rng(23);
  for (int trial = 0; trial < 36; ++trial) {
    const int k = 3 + 2 * (trial % 3), stride = 1 + (trial / 3) % 2, e = std::vector<int>{1, 3, 6}[(trial / 6) % 3];
    const int cin = rng.pick(std::vector<int>{3, 8, 16, 17}), c = cin * e;
    const bool residual = stride == 1 && trial % 4 != 3;
    const int cout = residual ? cin : rng.pick(std::vector<int>{4, 8, 19});
    const int bits = trial % 5 == 2 ? 4 : 8, group = bits == 4 ? 8 : 0;
    const int b = rng.integer(1, 3), h = rng.integer(1, 13), w = rng.integer(1, 13), band = rng.integer(0, 3);
    const int threads = 1 + trial % 3;
    GemmData ex = random_gemm(rng, c, cin, bits, group, kActs[trial % 5], false, false);
    DwData d = random_dw(rng, c, k, stride, kActs[(trial + 2) % 5]);
    GemmData pr = random_gemm(rng, cout, c, bits, group, "none", residual, false);
    const std::vector<uint8_t> x = rng.bytes(static_cast<size_t>(b) * h * w * cin);
    const int ho = (h - 1) / stride + 1, wo = (w - 1) / stride + 1;
    const std::string what = "fused e=" + std::to_string(e) + " k=" + std::to_string(k) + " s=" +
                             std::to_string(stride) + " " + std::to_string(b) + "x" + std::to_string(h) + "x" +
                             std::to_string(w) + "x" + std::to_string(cin) + " band " + std::to_string(band) +
                             " bits " + std::to_string(bits) + (residual ? " residual" : "");
    compare(f, what, static_cast<size_t>(b) * ho * wo * cout, [&](const std::string& isa, uint8_t* out) {
      ex.p.isa = d.p.isa = pr.p.isa = isa;
      auto dwop = std::make_shared<Depthwise>(d.p);
      auto prop = std::make_shared<Gemm>(pr.p);
      auto exop = e > 1 ? std::make_shared<Gemm>(ex.p) : nullptr;
      if (isa != "reference") {
        FusedBlock(exop, dwop, prop, band).task(x.data(), b, h, w, out, nullptr, 0)(threads);
        return;
      }
      std::vector<uint8_t> t1(static_cast<size_t>(b) * h * w * c), t2(static_cast<size_t>(b) * ho * wo * c);
      const uint8_t* dw_in = x.data();
      if (exop) {
        exop->task(x.data(), b * h * w, t1.data(), nullptr)(1);
        dw_in = t1.data();
      }
      dwop->task(dw_in, b, h, w, t2.data())(1);
      prop->task(t2.data(), b * ho * wo, out, residual ? x.data() : nullptr)(1);
    });
  }
}

// The stem fused into the first block (FusedBlock with a stem head) on each ARM ISA against the reference ISA's
// stem, depthwise and project run one by one: stem k 3/5/7, stride 1/2, odd sizes down to 1 pixel, with or without
// project (none: the depthwise output, as before a squeeze-excite), int8 and W4A8 projects, bands of 1-3 rows or
// automatic, 1-3 threads, batch 1-3.
void fused_stem(Family& f) {
  Rng rng(47);
  for (int trial = 0; trial < 36; ++trial) {
    const int sk = 3 + 2 * (trial % 3), ss = 1 + (trial / 3) % 2, k = 3 + 2 * ((trial / 6) % 3);
    const int stride = 1 + (trial / 2) % 2, cin = rng.pick(std::vector<int>{1, 3, 4});
    const int c = rng.pick(std::vector<int>{8, 16, 17});
    const bool project = trial % 4 != 1;
    const int cout = rng.pick(std::vector<int>{4, 8, 19});
    const int bits = trial % 5 == 2 ? 4 : 8, group = bits == 4 ? 8 : 0;
    const int b = rng.integer(1, 3), h = rng.integer(1, 29), w = rng.integer(1, 29), band = rng.integer(0, 3);
    const int threads = 1 + trial % 3;
    std::vector<int8_t> wt = rng.weights(static_cast<size_t>(c) * sk * sk * cin, 127);
    std::vector<int32_t> bias = rng.ints(c, -20000, 19999);
    RequantData rq = random_requant(rng, c, sk * sk * cin, kActs[trial % 5], 127);
    ConvParams sp;
    sp.weight = wt.data();
    sp.cout = c;
    sp.kh = sp.kw = sk;
    sp.cin = cin;
    sp.stride = ss;
    sp.bias = bias.data();
    sp.in_zp = rng.integer(0, 255);
    sp.requant = rq.params();
    DwData d = random_dw(rng, c, k, stride, kActs[(trial + 2) % 5]);
    GemmData pr = random_gemm(rng, cout, c, bits, group, "none", false, false);
    const std::vector<uint8_t> x = rng.bytes(static_cast<size_t>(b) * h * w * cin);
    const int h1 = (h - 1) / ss + 1, w1 = (w - 1) / ss + 1;  // k / 2 padding: ceil(h / s)
    const int ho = (h1 - 1) / stride + 1, wo = (w1 - 1) / stride + 1;
    const std::string what = "fused stem k=" + std::to_string(sk) + " s=" + std::to_string(ss) + " dw k=" +
                             std::to_string(k) + " s=" + std::to_string(stride) + " " + std::to_string(b) + "x" +
                             std::to_string(h) + "x" + std::to_string(w) + "x" + std::to_string(cin) + " band " +
                             std::to_string(band) + (project ? " bits " + std::to_string(bits) : " no project");
    compare(f, what, static_cast<size_t>(b) * ho * wo * (project ? cout : c),
            [&](const std::string& isa, uint8_t* out) {
      sp.isa = d.p.isa = pr.p.isa = isa;
      auto stem = std::make_shared<Conv>(sp);
      auto dwop = std::make_shared<Depthwise>(d.p);
      auto prop = project ? std::make_shared<Gemm>(pr.p) : nullptr;
      if (isa != "reference") {
        FusedBlock(nullptr, dwop, prop, band, stem).task(x.data(), b, h, w, out, nullptr, 0)(threads);
        return;
      }
      std::vector<uint8_t> t1(static_cast<size_t>(b) * h1 * w1 * c), t2(static_cast<size_t>(b) * ho * wo * c);
      stem->task(x.data(), b, h, w, t1.data())(1);
      dwop->task(t1.data(), b, h1, w1, project ? t2.data() : out)(1);
      if (prop) prop->task(t2.data(), b * ho * wo, out, nullptr)(1);
    });
  }
}

void stem_conv(Family& f) {
  Rng rng(13);
  struct Case { int cin, stride, h, w, k; };
  std::vector<Case> cases;
  for (int cin : {1, 3, 4})
    for (int stride : {1, 2})
      for (auto [h, w] : {std::pair{1, 1}, std::pair{2, 3}, std::pair{7, 9}, std::pair{16, 16}})
        cases.push_back({cin, stride, h, w, 3});
  cases.push_back({3, 2, 15, 13, 3});
  cases.push_back({3, 2, 11, 9, 5});
  cases.push_back({2, 1, 6, 7, 7});
  cases.push_back({5, 1, 4, 4, 1});
  for (const Case& cs : cases) {
    const int cout = rng.pick(std::vector<int>{8, 16, 19, 32});
    const std::string act = cs.h == 15 ? "hswish" : "relu6";
    std::vector<int8_t> wt = rng.weights(static_cast<size_t>(cout) * cs.k * cs.k * cs.cin, 127);
    std::vector<int32_t> bias = rng.ints(cout, -20000, 19999);
    RequantData rq = random_requant(rng, cout, cs.k * cs.k * cs.cin, act, 127);
    ConvParams p;
    p.weight = wt.data();
    p.cout = cout;
    p.kh = p.kw = cs.k;
    p.cin = cs.cin;
    p.stride = cs.stride;
    p.bias = bias.data();
    p.in_zp = rng.integer(0, 255);
    p.requant = rq.params();
    const int b = 2;
    const std::vector<uint8_t> x = rng.bytes(static_cast<size_t>(b) * cs.h * cs.w * cs.cin);
    const int pad = cs.k / 2;
    const int ho = (cs.h + 2 * pad - cs.k) / cs.stride + 1, wo = (cs.w + 2 * pad - cs.k) / cs.stride + 1;
    const std::string what = "conv k=" + std::to_string(cs.k) + " cin=" + std::to_string(cs.cin) + " cout=" +
                             std::to_string(cout) + " s=" + std::to_string(cs.stride) + " " + std::to_string(cs.h) +
                             "x" + std::to_string(cs.w);
    compare(f, what, static_cast<size_t>(b) * ho * wo * cout, [&](const std::string& isa, uint8_t* out) {
      p.isa = isa;
      const Conv op(p);
      op.task(x.data(), b, cs.h, cs.w, out)(2);
    });
  }
}

// In place (ops.h dw_in_place_rows): a stride-1 depthwise whose output starts D rows before its input in one buffer,
// on 1-3 threads (the smallest D the thread count allows, in rows and rounded up to 64 bytes as the planner does),
// at heights 1, 2, k / 2 + 1 and odd ones, and squeeze-excite over its own input; each against the reference ISA
// run out of place.
void in_place(Family& f) {
  Rng rng(24);
  for (int trial = 0; trial < 72; ++trial) {
    const int k = 3 + 2 * (trial % 3), threads = 1 + (trial / 3) % 3, c = rng.pick(std::vector<int>{1, 8, 17, 40});
    const int h = std::vector<int>{1, 2, k / 2 + 1, k / 2 + 2, rng.integer(3, 13)}[(trial / 9) % 5];
    const int w = rng.integer(1, 11), b = rng.integer(1, 3);
    const size_t bytes = static_cast<size_t>(b) * h * w * c;
    const size_t rows = static_cast<size_t>(dw_in_place_rows(threads, k)) * w * c;
    const size_t ahead = trial % 2 ? (rows + 63) / 64 * 64 : rows;
    DwData d = random_dw(rng, c, k, 1, kActs[trial % 5]);
    const std::vector<uint8_t> x = rng.bytes(bytes);
    const std::string what = "dw in place k=" + std::to_string(k) + " " + std::to_string(b) + "x" +
                             std::to_string(h) + "x" + std::to_string(w) + "x" + std::to_string(c) + " threads " +
                             std::to_string(threads) + " ahead " + std::to_string(ahead);
    compare(f, what, bytes, [&](const std::string& isa, uint8_t* out) {
      d.p.isa = isa;
      const Depthwise op(d.p);
      if (isa == "reference") {
        op.task(x.data(), b, h, w, out)(1);
        return;
      }
      std::vector<uint8_t> buf(ahead + bytes, 0x77);
      std::memcpy(buf.data() + ahead, x.data(), bytes);
      op.task(buf.data() + ahead, b, h, w, buf.data())(threads);
      std::memcpy(out, buf.data(), bytes);
    });
  }
  for (const int c : {1, 17, 72}) {
    const int b = rng.integer(1, 3), h = rng.integer(1, 9), w = rng.integer(1, 9), hw = h * w, hidden = 1 + c / 4;
    const size_t bytes = static_cast<size_t>(b) * hw * c;
    const std::vector<uint8_t> x = rng.bytes(bytes);
    int32_t pm, ps, sm, ss;
    quantize_multiplier(rng.real(0.5, 2.0) / hw, &pm, &ps);
    quantize_multiplier(rng.real(0.5, 1.5) / 255.0, &sm, &ss);
    const int pool_zp = rng.integer(0, 255), pool_out = rng.integer(0, 255), se_out = rng.integer(0, 255);
    GemmData fc1 = random_gemm(rng, hidden, c, 8, 0, "relu", false, false);
    GemmData fc2 = random_gemm(rng, c, hidden, 8, 0, "none", false, false);
    compare(f, "se in place c=" + std::to_string(c) + " hw=" + std::to_string(hw), bytes,
            [&](const std::string& isa, uint8_t* out) {
              fc1.p.isa = fc2.p.isa = isa;
              auto pool = std::make_shared<Pool>(hw, pool_zp, pm, ps, pool_out, isa);
              const SqueezeExcite op(pool, std::make_shared<Gemm>(fc1.p), std::make_shared<Gemm>(fc2.p), pool_zp, sm,
                                     ss, se_out, isa);
              if (isa == "reference") {
                op.task(x.data(), b, h, w, out)(1);
                return;
              }
              std::memcpy(out, x.data(), bytes);
              op.task(out, b, h, w, out)(1 + c % 3);
            });
  }
}

void pool_and_se(Family& f) {
  Rng rng(14);
  struct Case { int c, h, w, hidden; };
  // 20x20: 400 pixels, past the 256 the uint16 partial sums of the NEON pool take
  for (const Case& cs : {Case{16, 1, 1, 8}, Case{17, 3, 5, 4}, Case{72, 7, 7, 24}, Case{120, 2, 2, 32},
                         Case{33, 20, 20, 8}}) {
    const int b = rng.integer(1, 3), hw = cs.h * cs.w;
    const std::vector<uint8_t> x = rng.bytes(static_cast<size_t>(b) * hw * cs.c);
    int32_t pm, ps;
    quantize_multiplier(rng.real(0.5, 2.0) / hw, &pm, &ps);
    const int pool_zp = rng.integer(0, 255), pool_out = rng.integer(0, 255);
    compare(f, "pool c=" + std::to_string(cs.c) + " hw=" + std::to_string(hw), static_cast<size_t>(b) * cs.c,
            [&](const std::string& isa, uint8_t* out) {
              const Pool op(hw, pool_zp, pm, ps, pool_out, isa);
              op.task(x.data(), b, cs.h, cs.w, cs.c, out)(1);
            });
    // SE: fc1 ReLU, fc2 to the pre-activation grid + hard-sigmoid LUT (gate scale 1/255), then channel scaling
    GemmData fc1 = random_gemm(rng, cs.hidden, cs.c, 8, 0, "relu", false, false);
    GemmData fc2 = random_gemm(rng, cs.c, cs.hidden, 8, 0, "none", false, false);
    fc2.rq.zp = 128;
    fc2.rq.lut.resize(256);
    for (int i = 0; i < 256; ++i) {  // hard-sigmoid onto the gate grid (scale 1/255, zp 0)
      const double v = 8.0 / 255.0 * (i - 128), gate = std::fmin(std::fmax(v + 3.0, 0.0), 6.0) / 6.0;
      fc2.rq.lut[i] = static_cast<uint8_t>(std::nearbyint(gate * 255.0));
    }
    fc2.finish();
    int32_t sm, ss;
    quantize_multiplier(rng.real(0.5, 1.5) / 255.0, &sm, &ss);
    const int se_out = rng.integer(0, 255);
    compare(f, "se c=" + std::to_string(cs.c) + " hw=" + std::to_string(hw), static_cast<size_t>(b) * hw * cs.c,
            [&](const std::string& isa, uint8_t* out) {
              fc1.p.isa = fc2.p.isa = isa;
              auto pool = std::make_shared<Pool>(hw, pool_zp, pm, ps, pool_out, isa);
              const SqueezeExcite op(pool, std::make_shared<Gemm>(fc1.p), std::make_shared<Gemm>(fc2.p), pool_zp, sm,
                                     ss, se_out, isa);
              op.task(x.data(), b, cs.h, cs.w, out)(1 + cs.c % 3);
            });
  }
}

// A small network as one Plan: stem conv -> depthwise -> pointwise with residual -> pool.
void plan_chain(Family& f) {
  Rng rng(21);
  const int b = 2, h = 9, w = 11, c = 24;
  std::vector<int8_t> cw = rng.weights(static_cast<size_t>(c) * 9 * 3, 127), dw = rng.weights(c * 9, 127);
  std::vector<int32_t> cb = rng.ints(c, -2000, 2000), db = rng.ints(c, -2000, 2000);
  RequantData crq = random_requant(rng, c, 27, "relu6", 127), drq = random_requant(rng, c, 9, "hswish", 127);
  GemmData pw = random_gemm(rng, c, c, 4, 8, "none", true, false);
  const std::vector<uint8_t> x = rng.bytes(static_cast<size_t>(b) * h * w * 3);
  const int ho = 5, wo = 6;
  compare(f, "plan stem+dw+pw+pool", static_cast<size_t>(b) * c, [&](const std::string& isa, uint8_t* out) {
    ConvParams cp;
    cp.weight = cw.data();
    cp.cout = c;
    cp.kh = cp.kw = 3;
    cp.cin = 3;
    cp.stride = 2;
    cp.bias = cb.data();
    cp.in_zp = 7;
    cp.requant = crq.params();
    cp.isa = isa;
    DepthwiseParams dp;
    dp.weight = dw.data();
    dp.c = c;
    dp.kh = dp.kw = 3;
    dp.bias = db.data();
    dp.in_zp = crq.zp;
    dp.requant = drq.params();
    dp.isa = isa;
    pw.p.isa = isa;
    const Conv conv(cp);
    const Depthwise dwop(dp);
    const Gemm pwop(pw.p);
    const Pool pool(ho * wo, 90, 1 << 30, -4, 3, isa);
    std::vector<uint8_t> a1(static_cast<size_t>(b) * ho * wo * c), a2(a1.size()), a3(a1.size());
    Plan plan;
    plan.add(conv.task(x.data(), b, h, w, a1.data()));
    plan.add(dwop.task(a1.data(), b, ho, wo, a2.data()));
    plan.add(pwop.task(a2.data(), b * ho * wo, a3.data(), a1.data()));
    plan.add(pool.task(a3.data(), b, ho, wo, c, out));
    plan.run(3);
  });
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s EXPECTED_BEST_ISA\n", argv[0]);
    return 2;
  }
  std::string best;
  for (const Isa& isa : all_isas())
    if (isa.supported()) {
      best = isa.name;
      if (isa.name != "reference") g_isas.push_back(isa.name);
    }
  std::printf("isas:");
  for (const Isa& isa : all_isas()) std::printf(" %s%s", isa.name.c_str(), isa.supported() ? "" : "(unsupported)");
  std::printf("\nbest: %s\n", best.c_str());
  int bad = 0;
  if (best != argv[1]) {
    std::printf("FAIL: the CPU's features select %s, expected %s\n", best.c_str(), argv[1]);
    ++bad;
  }
  for (const Isa& isa : all_isas())  // an ISA the CPU lacks is refused, naming it
    if (!isa.supported()) {
      try {
        checked_isa(isa.name);
        std::printf("FAIL: checked_isa accepted unsupported %s\n", isa.name.c_str());
        ++bad;
      } catch (const std::invalid_argument& e) {
        if (std::string(e.what()).find(isa.name) == std::string::npos) ++bad;
      }
    }
  if (g_isas.empty()) {
    std::printf("FAIL: no ARM ISA is supported\n");
    ++bad;
  }
  std::vector<Family> fams = {{"gemm_random"}, {"gemm_many_rows"}, {"gemm_int32"}, {"requant_ties"},
                              {"epilogue_unfused"}, {"depthwise"}, {"stem_conv"}, {"pool_se"}, {"plan"},
                              {"dw_row_window"}, {"fused_block"}, {"in_place"}, {"fused_stem"}};
  gemm_random_shapes(fams[0]);
  gemm_many_rows(fams[1]);
  gemm_int32_logits(fams[2]);
  requant_ties(fams[3]);
  epilogue_unfused(fams[4]);
  depthwise_random_shapes(fams[5]);
  stem_conv(fams[6]);
  pool_and_se(fams[7]);
  plan_chain(fams[8]);
  depthwise_row_windows(fams[9]);
  fused_blocks(fams[10]);
  in_place(fams[11]);
  fused_stem(fams[12]);
  int cases = 0;
  for (const Family& f : fams) {
    std::printf("%-16s cases %3d  output bytes %8lld  mismatches %d\n", f.name.c_str(), f.cases,
                static_cast<long long>(f.values), f.mismatches);
    bad += f.mismatches;
    cases += f.cases;
  }
  std::printf("%s: %d cases x %zu ISAs\n", bad ? "FAIL" : "OK", cases, g_isas.size());
  return bad ? 1 : 0;
}
