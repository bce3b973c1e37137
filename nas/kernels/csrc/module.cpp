// pybind11 bindings: the op objects (validate, pack for their ISA's kernel table, run without the GIL).
// Validation helpers: validate.h; packing: pack.h; the per-ISA kernel tables: config.cpp.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common.h"
#include "config.h"
#include "pack.h"
#include "validate.h"

#ifndef NASK_BUILD_FLAGS
#define NASK_BUILD_FLAGS "unknown"
#endif

namespace nask {
namespace {

using Task = std::function<void(int)>;  // one bound kernel call: threads -> void

// ---------------------------------------------------------------- ops
// y[m, n] = requant(sum_k x[m, k] * w[n, k] + bias[n]); x uint8 (zero point in_zp), w int8 or int4.
class Gemm {
 public:
  Gemm(const py::object& weight, const py::object& bias, int in_zp, const py::object& multiplier,
       const py::object& shift, int out_zp, int act_min, int act_max, const py::object& lut, int bits,
       const py::object& sub_scales, int group_size, const std::string& isa, bool out_int32,
       const py::object& residual) {
    isa_ = &checked_isa(isa);
    if (bits != 8 && bits != 4) throw py::value_error("bits: expected 8 or 4, got " + std::to_string(bits));
    py::array w = need<int8_t>(weight, "weight", {-1, -1});
    const int n = static_cast<int>(w.shape(0)), k = static_cast<int>(w.shape(1));
    if (n < 1 || k < 1) throw py::value_error("weight: empty shape " + shape_str(w));
    if (k > (1 << 16)) throw py::value_error("weight: K=" + std::to_string(k) + " too large (max 65536)");
    py::array b = need<int32_t>(bias, "bias", {n});
    check_range(in_zp, 0, 255, "in_zp");
    const int8_t* wp = static_cast<const int8_t*>(w.data());
    const int lim = bits == 4 ? 7 : 127;
    for (int64_t i = 0; i < static_cast<int64_t>(n) * k; ++i)
      if (wp[i] < -lim || wp[i] > lim)
        throw py::value_error("weight: values must lie in [-" + std::to_string(lim) + ", " + std::to_string(lim) +
                              "] for bits=" + std::to_string(bits));
    pw_.n = n;
    pw_.k = k;
    pw_.bits = bits;
    const int32_t* subs = nullptr;
    py::array sa;
    if (!sub_scales.is_none()) {
      if (bits != 4) throw py::value_error("sub_scales: group scales are only supported with bits=4");
      if (group_size < 4 || group_size % 4 != 0)
        throw py::value_error("group_size: expected a positive multiple of 4, got " + std::to_string(group_size));
      const int ng = (k + group_size - 1) / group_size;
      sa = need<int32_t>(sub_scales, "sub_scales", {n, ng});
      subs = static_cast<const int32_t*>(sa.data());
      for (int64_t i = 0; i < static_cast<int64_t>(n) * ng; ++i) check_range(subs[i], 0, 255, "sub_scales");
      if (static_cast<int64_t>(k) * 255 * 255 * 8 >= (1ll << 31))
        throw py::value_error("weight: K too large for grouped int4 accumulation");
      pw_.grouped = true;
      pw_.group = group_size;
      pw_.ngroups = ng;
    }
    fill_requant(q_, n, multiplier, shift, out_zp, act_min, act_max, lut);
    q_.out_int32 = out_int32;
    const int32_t* bp = static_cast<const int32_t*>(b.data());
    std::vector<int64_t> bound(n);
    for (int j = 0; j < n; ++j) {
      int64_t wsum = 0, wabs = 0;
      for (int i = 0; i < k; ++i) {
        const int64_t sub = subs ? subs[j * pw_.ngroups + i / group_size] : 1;
        const int64_t v = static_cast<int64_t>(wp[static_cast<int64_t>(j) * k + i]) * sub;
        wsum += v;
        wabs += v < 0 ? -v : v;
      }
      const int64_t be = static_cast<int64_t>(bp[j]) - static_cast<int64_t>(in_zp) * wsum;
      if (be < INT32_MIN / 2 || be > INT32_MAX / 2) throw py::value_error("bias: out of int32 range after zero-point folding");
      q_.bias[j] = static_cast<int32_t>(be);
      bound[j] = 255 * wabs + (be < 0 ? -be : be);
    }
    if (!residual.is_none()) {
      if (out_int32) throw py::value_error("residual: not supported with out_int32");
      auto t = residual.cast<std::tuple<int, int32_t, int32_t>>();
      check_range(std::get<0>(t), 0, 255, "residual zero point");
      check_range(std::get<1>(t), 0, INT32_MAX, "residual multiplier");
      check_range(std::get<2>(t), -31, 30, "residual shift");
      q_.residual = true;
      q_.res_zp = std::get<0>(t);
      // both multipliers carry 2^kResidualBits; dividing the float32 scales by it is exact
      q_.res_scale = std::ldexp(scale_of(std::get<1>(t), std::get<2>(t)), -kResidualBits);
      for (int j = 0; j < n; ++j) q_.scale[j] = std::ldexp(q_.scale[j], -kResidualBits);
    }
    q_.check_overflow(bound);
    isa_->kernels.pack_gemm(pw_, wp, subs);
    view_ = q_.view();
  }

  int n() const { return pw_.n; }
  int k() const { return pw_.k; }
  bool residual() const { return q_.residual; }
  bool out_int32() const { return q_.out_int32; }
  const Isa& isa() const { return *isa_; }
  std::string isa_name() const { return isa_->name; }
  size_t packed_bytes() const { return pw_.w.size; }

  // Direct convolution rows (ConvGeom; ISAs with direct_conv only, weights packed by pack_conv_rows).
  void run_conv(const ConvGeom& g, int m, void* out, int threads) const {
    GemmArgs a;
    a.m = m;
    a.conv = &g;
    a.w = &pw_;
    a.q = view_;
    a.out = out;
    a.ldo = pw_.n;
    isa_->kernels.gemm(a, threads);
  }

  // Raw entry (no checks, GIL must already be released by the caller if desired).
  void run_raw(const uint8_t* x, int m, void* out, const uint8_t* res, int threads) const {
    GemmArgs a;
    a.m = m;
    a.x = x;
    a.ldx = pw_.k;
    a.w = &pw_;
    a.q = view_;
    a.out = out;
    a.ldo = pw_.n;
    a.res = res;
    a.ldr = pw_.n;
    isa_->kernels.gemm(a, threads);
  }

  // Validates the arrays and returns the kernel call on their raw pointers (run without the GIL).
  Task bind(const py::object& x_o, const py::object& out_o, const py::object& res_o) const {
    py::array x = need<uint8_t>(x_o, "x", {-1, pw_.k});
    const int m = static_cast<int>(x.shape(0));
    if (m < 1) throw py::value_error("x: needs at least one row");
    py::array out = q_.out_int32 ? need<int32_t>(out_o, "out", {m, pw_.n}) : need<uint8_t>(out_o, "out", {m, pw_.n});
    need_writeable(out, "out");
    const uint8_t* res = nullptr;
    py::array r;
    if (q_.residual) {
      if (res_o.is_none()) throw py::value_error("residual: this op was built with a residual; pass the input");
      r = need<uint8_t>(res_o, "residual", {m, pw_.n});
      res = static_cast<const uint8_t*>(r.data());
    } else if (!res_o.is_none()) {
      throw py::value_error("residual: this op was built without residual parameters");
    }
    const uint8_t* xp = static_cast<const uint8_t*>(x.data());
    void* op = out.mutable_data();
    return [this, xp, m, op, res](int threads) { run_raw(xp, m, op, res, threads); };
  }

  void run(const py::object& x_o, const py::object& out_o, const py::object& res_o, int threads) const {
    check_threads(threads);
    const Task t = bind(x_o, out_o, res_o);
    py::gil_scoped_release nogil;
    t(threads);
  }

 private:
  const Isa* isa_ = nullptr;
  PackedWeights pw_;
  Requant q_;
  RqView view_{};
};

// Full kxk convolution (the stem) as im2col (padding value = in_zp) + GEMM.
class Conv {
 public:
  Conv(const py::object& weight, int stride, const py::object& bias, int in_zp, const py::object& multiplier,
       const py::object& shift, int out_zp, int act_min, int act_max, const py::object& lut, const std::string& isa) {
    py::array w = need<int8_t>(weight, "weight", {-1, -1, -1, -1});
    cout_ = static_cast<int>(w.shape(0));
    k_ = static_cast<int>(w.shape(1));
    cin_ = static_cast<int>(w.shape(3));
    if (w.shape(2) != k_ || (k_ != 1 && k_ != 3 && k_ != 5 && k_ != 7))
      throw py::value_error("weight: expected shape (Cout, k, k, Cin) with k in {1, 3, 5, 7}, got " + shape_str(w));
    if (stride != 1 && stride != 2) throw py::value_error("stride: expected 1 or 2, got " + std::to_string(stride));
    stride_ = stride;
    in_zp_ = in_zp;
    direct_ = parse_isa(isa).kernels.direct_conv;
    py::array w2 = w.attr("reshape")(cout_, k_ * k_ * cin_);
    if (direct_) {  // [Cout][k][seg4]: each kernel row padded with zeros to a multiple of 4 bytes
      seg4_ = conv_seg4(k_, cin_);
      py::array_t<int8_t> wd({cout_, k_ * seg4_});
      pack_conv_rows(static_cast<const int8_t*>(w2.data()), cout_, k_, cin_, wd.mutable_data());
      w2 = wd;
    }
    gemm_ = std::make_unique<Gemm>(w2, bias, in_zp, multiplier, shift, out_zp, act_min, act_max, lut, 8, py::none(),
                                   0, isa, false, py::none());
  }

  Task bind(const py::object& x_o, const py::object& out_o) const {
    py::array x = need<uint8_t>(x_o, "x", {-1, -1, -1, cin_});
    const int b = static_cast<int>(x.shape(0)), h = static_cast<int>(x.shape(1)), w = static_cast<int>(x.shape(2));
    if (b < 1 || h < 1 || w < 1) throw py::value_error("x: empty shape " + shape_str(x));
    const int ho = (h + 2 * (k_ / 2) - k_) / stride_ + 1, wo = (w + 2 * (k_ / 2) - k_) / stride_ + 1;
    py::array out = need<uint8_t>(out_o, "out", {b, ho, wo, cout_});
    need_writeable(out, "out");
    const uint8_t* xp = static_cast<const uint8_t*>(x.data());
    uint8_t* op = static_cast<uint8_t*>(out.mutable_data());
    return [this, xp, op, b, h, w, ho, wo](int threads) { run_raw(xp, op, b, h, w, ho, wo, threads); };
  }

  void run(const py::object& x_o, const py::object& out_o, int threads) const {
    check_threads(threads);
    const Task t = bind(x_o, out_o);
    py::gil_scoped_release nogil;
    t(threads);
  }

  void run_raw(const uint8_t* xp, uint8_t* op, int b, int h, int w, int ho, int wo, int threads) const {
    if (direct_) {
      run_direct(xp, op, b, h, w, ho, wo, threads);
      return;
    }
    const int kk = k_ * k_ * cin_, pad = k_ / 2;
    const int m = b * ho * wo;
    thread_local std::vector<uint8_t> col;  // reused across calls (no page faults per run)
    if (col.size() < static_cast<size_t>(m) * kk) col.resize(static_cast<size_t>(m) * kk);
    uint8_t* cp = col.data();
    const int k = k_, s = stride_, cin = cin_, zp = in_zp_;
    auto im2col = [&](int r0, int r1) {
      for (int r = r0; r < r1; ++r) {
        const int bi = r / ho, oy = r % ho;
        for (int ox = 0; ox < wo; ++ox) {
          uint8_t* d = cp + (static_cast<size_t>(r) * wo + ox) * kk;
          for (int ky = 0; ky < k; ++ky) {
            const int iy = oy * s + ky - pad;
            uint8_t* dr = d + ky * k * cin;
            if (iy < 0 || iy >= h) {
              std::memset(dr, zp, static_cast<size_t>(k) * cin);
              continue;
            }
            const int ix0 = ox * s - pad;
            const uint8_t* src = xp + ((static_cast<size_t>(bi) * h + iy) * w) * cin;
            if (ix0 >= 0 && ix0 + k <= w) {
              std::memcpy(dr, src + static_cast<size_t>(ix0) * cin, static_cast<size_t>(k) * cin);
            } else {
              for (int kx = 0; kx < k; ++kx) {
                const int ix = ix0 + kx;
                if (ix < 0 || ix >= w) std::memset(dr + kx * cin, zp, cin);
                else std::memcpy(dr + kx * cin, src + static_cast<size_t>(ix) * cin, cin);
              }
            }
          }
        }
      }
    };
    par(threads, b * ho, im2col);
    gemm_->run_raw(cp, m, op, nullptr, threads);
  }

  // Zero-point padded copy of the input, then the GEMM reads the kernel rows in place (ConvGeom).
  void run_direct(const uint8_t* xp, uint8_t* op, int b, int h, int w, int ho, int wo, int threads) const {
    const int p = k_ / 2, hp = h + 2 * p, wp = w + 2 * p;
    const size_t row = static_cast<size_t>(wp) * cin_, inner = static_cast<size_t>(w) * cin_;
    const size_t side = static_cast<size_t>(p) * cin_;
    thread_local std::vector<uint8_t> padded;  // reused across calls (no page faults per run)
    const size_t need_bytes = static_cast<size_t>(b) * hp * row + 64;  // + slack: rows are read in seg4 bytes
    if (padded.size() < need_bytes) padded.resize(need_bytes);
    uint8_t* pb = padded.data();
    const int zp = in_zp_;
    par(threads, b * hp, [&](int r0, int r1) {
      for (int r = r0; r < r1; ++r) {
        const int bi = r / hp, y = r % hp - p;
        uint8_t* d = pb + static_cast<size_t>(r) * row;
        if (y < 0 || y >= h) {
          std::memset(d, zp, row);
        } else {
          std::memset(d, zp, side);
          std::memcpy(d + side, xp + (static_cast<size_t>(bi) * h + y) * inner, inner);
          std::memset(d + side + inner, zp, side);
        }
      }
    });
    std::memset(pb + static_cast<size_t>(b) * hp * row, zp, 64);
    ConvGeom g;
    g.pad = pb;
    g.ho = ho;
    g.wo = wo;
    g.hp = hp;
    g.wp = wp;
    g.cin = cin_;
    g.stride = stride_;
    g.k = k_;
    g.seg4 = seg4_;
    gemm_->run_conv(g, b * ho * wo, op, threads);
  }

 private:
  std::unique_ptr<Gemm> gemm_;
  int cout_ = 0, k_ = 0, cin_ = 0, stride_ = 1, in_zp_ = 0, seg4_ = 0;
  bool direct_ = false;
};

class Depthwise {
 public:
  Depthwise(const py::object& weight, int stride, const py::object& bias, int in_zp, const py::object& multiplier,
            const py::object& shift, int out_zp, int act_min, int act_max, const py::object& lut,
            const std::string& isa) {
    isa_ = &checked_isa(isa);
    py::array w = need<int8_t>(weight, "weight", {-1, -1, -1});
    c_ = static_cast<int>(w.shape(0));
    k_ = static_cast<int>(w.shape(1));
    if (c_ < 1 || w.shape(2) != k_ || (k_ != 3 && k_ != 5 && k_ != 7))
      throw py::value_error("weight: expected shape (C, k, k) with k in {3, 5, 7}, got " + shape_str(w));
    if (stride != 1 && stride != 2) throw py::value_error("stride: expected 1 or 2, got " + std::to_string(stride));
    stride_ = stride;
    check_range(in_zp, 0, 255, "in_zp");
    in_zp_ = in_zp;
    py::array b = need<int32_t>(bias, "bias", {c_});
    fill_requant(q_, c_, multiplier, shift, out_zp, act_min, act_max, lut);
    const int32_t* bp = static_cast<const int32_t*>(b.data());
    for (int c = 0; c < c_; ++c) q_.bias[c] = bp[c];
    const int8_t* wp = static_cast<const int8_t*>(w.data());
    for (int64_t i = 0; i < static_cast<int64_t>(c_) * k_ * k_; ++i)
      if (wp[i] == -128) throw py::value_error("weight: values must lie in [-127, 127]");
    std::vector<int64_t> bound(c_);
    for (int c = 0; c < c_; ++c) {
      int64_t wabs = 0;
      for (int t = 0; t < k_ * k_; ++t) wabs += std::abs(static_cast<int>(wp[c * k_ * k_ + t]));
      bound[c] = 255 * wabs + std::abs(static_cast<int64_t>(bp[c]));
    }
    q_.check_overflow(bound);
    isa_->kernels.pack_depthwise(packed_, wp, c_, k_, in_zp_, q_);
    view_ = q_.view();
  }

  Task bind(const py::object& x_o, const py::object& out_o) const {
    py::array x = need<uint8_t>(x_o, "x", {-1, -1, -1, c_});
    DwArgs a;
    a.batch = static_cast<int>(x.shape(0));
    a.h = static_cast<int>(x.shape(1));
    a.w = static_cast<int>(x.shape(2));
    if (a.batch < 1 || a.h < 1 || a.w < 1) throw py::value_error("x: empty shape " + shape_str(x));
    a.c = c_;
    a.k = k_;
    a.stride = stride_;
    a.ho = (a.h - 1) / stride_ + 1;
    a.wo = (a.w - 1) / stride_ + 1;
    py::array out = need<uint8_t>(out_o, "out", {a.batch, a.ho, a.wo, c_});
    need_writeable(out, "out");
    a.in_zp = in_zp_;
    a.x = static_cast<const uint8_t*>(x.data());
    a.wt = packed_.taps.data();
    a.dw_w = packed_.vw.as<int8_t>();
    a.dw_init = packed_.vinit.as<int32_t>();
    a.dw_scale = packed_.vscale.as<float>();
    a.cpad = packed_.cpad;
    a.q = view_;
    a.out = static_cast<uint8_t*>(out.mutable_data());
    const auto depthwise = isa_->kernels.depthwise;
    return [a, depthwise](int threads) { depthwise(a, threads); };
  }

  void run(const py::object& x_o, const py::object& out_o, int threads) const {
    check_threads(threads);
    const Task t = bind(x_o, out_o);
    py::gil_scoped_release nogil;
    t(threads);
  }

 private:
  const Isa* isa_ = nullptr;
  int c_ = 0, k_ = 0, stride_ = 1, in_zp_ = 0;
  Requant q_;
  RqView view_{};
  DwPacked packed_;
};

// Global average pool: out[b, c] = rne(clamp(float32(sum_p x[b, p, c] - hw * in_zp) * scale)) + out_zp.
class Pool {
 public:
  Pool(int hw, int in_zp, int32_t multiplier, int32_t shift, int out_zp, const std::string& isa) {
    isa_ = &checked_isa(isa);
    check_range(hw, 1, 1 << 22, "hw");
    check_range(in_zp, 0, 255, "in_zp");
    check_range(out_zp, 0, 255, "out_zp");
    a_.hw = hw;
    a_.in_zp = in_zp;
    a_.out_zp = out_zp;
    a_.scale = checked_scale(multiplier, shift);
  }
  int hw() const { return a_.hw; }

  void run_raw(const uint8_t* x, int batch, int c, uint8_t* out, int threads) const {
    PoolArgs a = a_;
    a.batch = batch;
    a.c = c;
    a.x = x;
    a.out = out;
    isa_->kernels.pool(a, threads);
  }

  Task bind(const py::object& x_o, const py::object& out_o) const {
    py::array x = need<uint8_t>(x_o, "x", {-1, -1, -1, -1});
    const int b = static_cast<int>(x.shape(0)), c = static_cast<int>(x.shape(3));
    if (x.shape(1) * x.shape(2) != a_.hw)
      throw py::value_error("x: spatial size " + shape_str(x) + " does not match hw=" + std::to_string(a_.hw));
    if (b < 1 || c < 1) throw py::value_error("x: empty shape " + shape_str(x));
    py::array out = need<uint8_t>(out_o, "out", {b, c});
    need_writeable(out, "out");
    const uint8_t* xp = static_cast<const uint8_t*>(x.data());
    uint8_t* op = static_cast<uint8_t*>(out.mutable_data());
    return [this, xp, b, c, op](int threads) { run_raw(xp, b, c, op, threads); };
  }

  void run(const py::object& x_o, const py::object& out_o, int threads) const {
    check_threads(threads);
    const Task t = bind(x_o, out_o);
    py::gil_scoped_release nogil;
    t(threads);
  }

 private:
  const Isa* isa_ = nullptr;
  PoolArgs a_;
};

// Squeeze-and-excitation: pool -> fc1 (ReLU) -> fc2 (hard-sigmoid via LUT, gate scale 1/255) -> scale.
class SqueezeExcite {
 public:
  SqueezeExcite(std::shared_ptr<Pool> pool, std::shared_ptr<Gemm> fc1, std::shared_ptr<Gemm> fc2, int in_zp,
                int32_t multiplier, int32_t shift, int out_zp, const std::string& isa)
      : pool_(std::move(pool)), fc1_(std::move(fc1)), fc2_(std::move(fc2)) {
    isa_ = &checked_isa(isa);
    if (fc1_->k() != fc2_->n() || fc1_->n() != fc2_->k())
      throw py::value_error("fc1/fc2: shapes do not chain (C -> S -> C)");
    if (fc1_->residual() || fc2_->residual() || fc1_->out_int32() || fc2_->out_int32())
      throw py::value_error("fc1/fc2: must be plain uint8-output GEMMs");
    if (&fc1_->isa() != isa_ || &fc2_->isa() != isa_)
      throw py::value_error("fc1/fc2: must be built for the same isa as the SE op");
    check_range(in_zp, 0, 255, "in_zp");
    check_range(out_zp, 0, 255, "out_zp");
    s_.in_zp = in_zp;
    s_.out_zp = out_zp;
    s_.scale = checked_scale(multiplier, shift);
  }

  Task bind(const py::object& x_o, const py::object& out_o) const {
    const int c = fc1_->k();
    py::array x = need<uint8_t>(x_o, "x", {-1, -1, -1, c});
    const int b = static_cast<int>(x.shape(0)), hw = static_cast<int>(x.shape(1) * x.shape(2));
    if (b < 1) throw py::value_error("x: empty batch");
    if (hw != pool_->hw())
      throw py::value_error("x: spatial size " + shape_str(x) + " does not match hw=" + std::to_string(pool_->hw()));
    py::array out = need<uint8_t>(out_o, "out", {b, x.shape(1), x.shape(2), c});
    need_writeable(out, "out");
    const uint8_t* xp = static_cast<const uint8_t*>(x.data());
    uint8_t* op = static_cast<uint8_t*>(out.mutable_data());
    return [this, xp, op, b, hw, c](int threads) { run_raw(xp, op, b, hw, c, threads); };
  }

  void run(const py::object& x_o, const py::object& out_o, int threads) const {
    check_threads(threads);
    const Task t = bind(x_o, out_o);
    py::gil_scoped_release nogil;
    t(threads);
  }

  void run_raw(const uint8_t* xp, uint8_t* op, int b, int hw, int c, int threads) const {
    std::vector<uint8_t> pooled(static_cast<size_t>(b) * c), hid(static_cast<size_t>(b) * fc1_->n()),
        gate(static_cast<size_t>(b) * c);
    pool_->run_raw(xp, b, c, pooled.data(), threads);
    fc1_->run_raw(pooled.data(), b, hid.data(), nullptr, threads);
    fc2_->run_raw(hid.data(), b, gate.data(), nullptr, threads);
    ScaleArgs a = s_;
    a.batch = b;
    a.hw = hw;
    a.c = c;
    a.x = xp;
    a.gate = gate.data();
    a.out = op;
    isa_->kernels.channel_scale(a, threads);
  }

 private:
  const Isa* isa_ = nullptr;
  std::shared_ptr<Pool> pool_;
  std::shared_ptr<Gemm> fc1_, fc2_;
  ScaleArgs s_;
};

// A fixed sequence of op calls on fixed arrays (a whole network): validated once, run in one call without the GIL.
class Plan {
 public:
  Plan(const py::list& ops, const py::list& xs, const py::list& outs, const py::list& residuals) {
    const size_t n = ops.size();
    if (xs.size() != n || outs.size() != n || residuals.size() != n)
      throw py::value_error("Plan: ops, xs, outs and residuals must have the same length");
    for (size_t i = 0; i < n; ++i) {
      const py::object op = ops[i];
      if (py::isinstance<Gemm>(op)) tasks_.push_back(op.cast<const Gemm&>().bind(xs[i], outs[i], residuals[i]));
      else if (py::isinstance<Conv>(op)) tasks_.push_back(op.cast<const Conv&>().bind(xs[i], outs[i]));
      else if (py::isinstance<Depthwise>(op)) tasks_.push_back(op.cast<const Depthwise&>().bind(xs[i], outs[i]));
      else if (py::isinstance<Pool>(op)) tasks_.push_back(op.cast<const Pool&>().bind(xs[i], outs[i]));
      else if (py::isinstance<SqueezeExcite>(op)) tasks_.push_back(op.cast<const SqueezeExcite&>().bind(xs[i], outs[i]));
      else throw py::type_error("Plan: ops[" + std::to_string(i) + "] is not a kernel op");
      if (!residuals[i].is_none() && !py::isinstance<Gemm>(op))
        throw py::value_error("Plan: residuals[" + std::to_string(i) + "]: only GEMMs take a residual");
    }
    keep_ = py::make_tuple(ops, xs, outs, residuals);  // the raw pointers stay valid while the plan lives
  }

  void run(int threads) const {
    check_threads(threads);
    py::gil_scoped_release nogil;
    for (const Task& t : tasks_) t(threads);
  }

  size_t size() const { return tasks_.size(); }

 private:
  std::vector<Task> tasks_;
  py::tuple keep_;
};

// float32 NCHW -> uint8 NHWC: clamp(round_half_even(x / scale) + zp, 0, 255), same as quant.quantize_input.
void quantize_nchw(const py::object& x_o, float scale, int zp, const py::object& out_o) {
  py::array x = need<float>(x_o, "x", {-1, -1, -1, -1});
  const int n = static_cast<int>(x.shape(0)), c = static_cast<int>(x.shape(1));
  const int h = static_cast<int>(x.shape(2)), w = static_cast<int>(x.shape(3));
  py::array out = need<uint8_t>(out_o, "out", {n, h, w, c});
  need_writeable(out, "out");
  check_range(zp, 0, 255, "zero_point");
  if (!(scale > 0.0f)) throw py::value_error("scale: must be > 0");
  const float* xp = static_cast<const float*>(x.data());
  uint8_t* op = static_cast<uint8_t*>(out.mutable_data());
  // The strongest supported ISA with a vector RGB path, whatever the active ISA: the result is the same bits.
  decltype(KernelTable::quantize_rgb) quantize_rgb = nullptr;
  for (const Isa& isa : all_isas())
    if (isa.kernels.quantize_rgb && isa.supported()) quantize_rgb = isa.kernels.quantize_rgb;
  py::gil_scoped_release nogil;
  const float fzp = static_cast<float>(zp);
  const size_t hw = static_cast<size_t>(h) * w;
  const bool fast = c == 3 && quantize_rgb;
  std::vector<uint8_t> tmp(hw);
  uint8_t* t = tmp.data();
  for (int b = 0; b < n; ++b) {
    const float* xb = xp + static_cast<size_t>(b) * c * hw;
    uint8_t* ob = op + static_cast<size_t>(b) * hw * c;
    size_t p0 = 0;
    if (fast) {
      p0 = static_cast<size_t>(quantize_rgb(xb, static_cast<int64_t>(hw), scale, fzp, ob));
      for (size_t p = p0; p < hw; ++p)
        for (int ch = 0; ch < 3; ++ch) ob[p * 3 + ch] = quantize_value(xb[ch * hw + p], scale, fzp);
      continue;
    }
    for (int ch = 0; ch < c; ++ch) {
      const float* src = xb + static_cast<size_t>(ch) * hw;
      for (size_t p = 0; p < hw; ++p) t[p] = quantize_value(src[p], scale, fzp);
      for (size_t p = 0; p < hw; ++p) ob[p * c + ch] = t[p];
    }
  }
}

// Weight gradient of a float32 NHWC depthwise convolution (training); out is [k * k, C], tap-major.
void depthwise_weight_grad(const py::object& x_o, const py::object& g_o, int k, int stride, int pad,
                           const py::object& out_o, int threads, const std::string& isa_name) {
  py::array x = need<float>(x_o, "x", {-1, -1, -1, -1});
  const int n = static_cast<int>(x.shape(0)), h = static_cast<int>(x.shape(1));
  const int w = static_cast<int>(x.shape(2)), c = static_cast<int>(x.shape(3));
  check_range(k, 1, 15, "k");
  check_range(stride, 1, 4, "stride");
  check_range(pad, 0, k - 1, "pad");
  const int ho = (h + 2 * pad - k) / stride + 1, wo = (w + 2 * pad - k) / stride + 1;
  if (ho < 1 || wo < 1) throw py::value_error("x: input " + shape_str(x) + " is smaller than the kernel");
  py::array g = need<float>(g_o, "grad_out", {n, ho, wo, c});
  py::array out = need<float>(out_o, "out", {k * k, c});
  need_writeable(out, "out");
  if (threads < 1) throw py::value_error("threads: must be >= 1");
  const auto dw_weight_grad = checked_isa(isa_name).kernels.dw_weight_grad;
  const int chunks = (n + kDwGradChunk - 1) / kDwGradChunk;
  std::vector<float> partial(static_cast<size_t>(chunks) * k * k * c);
  DwGradArgs a;
  a.batch = n; a.h = h; a.w = w; a.c = c; a.k = k; a.stride = stride; a.pad = pad; a.ho = ho; a.wo = wo;
  a.x = static_cast<const float*>(x.data());
  a.g = static_cast<const float*>(g.data());
  a.partial = partial.data();
  a.out = static_cast<float*>(out.mutable_data());
  py::gil_scoped_release nogil;
  dw_weight_grad(a, threads);
}

// Fake quantization of a float32 array (any shape, C-contiguous) on the grid [qmin, qmax]: out and a 0/1 mask of
// the elements inside the grid (the straight-through gradient), as PyTorch's fake_quantize_per_tensor_affine.
void fake_quant(const py::object& x_o, float scale, int zero_point, int qmin, int qmax, const py::object& out_o,
                const py::object& mask_o, int threads, const std::string& isa_name) {
  if (!py::isinstance<py::array>(x_o)) throw py::type_error("x: expected a numpy array of float32");
  py::array xa = py::reinterpret_borrow<py::array>(x_o);
  std::vector<py::ssize_t> dims(xa.shape(), xa.shape() + xa.ndim());
  py::array x = need<float>(x_o, "x", dims);
  py::array out = need<float>(out_o, "out", dims);
  py::array mask = need<uint8_t>(mask_o, "mask", dims);
  need_writeable(out, "out");
  need_writeable(mask, "mask");
  if (!(scale > 0.0f) || !std::isfinite(scale)) throw py::value_error("scale: expected a positive finite value");
  if (qmin > qmax) throw py::value_error("qmin: must not exceed qmax");
  if (threads < 1) throw py::value_error("threads: must be >= 1");
  const auto vec = checked_isa(isa_name).kernels.fake_quant;  // nullptr: scalar loop only
  const int64_t n = static_cast<int64_t>(x.size());
  const float* xp = static_cast<const float*>(x.data());
  float* op = static_cast<float*>(out.mutable_data());
  uint8_t* mp = static_cast<uint8_t*>(mask.mutable_data());
  const float inv = 1.0f / scale, zp = static_cast<float>(zero_point);
  const float lo = static_cast<float>(qmin), hi = static_cast<float>(qmax);
  constexpr int64_t kChunk = 1 << 16;
  const int tasks = static_cast<int>((n + kChunk - 1) / kChunk);
  py::gil_scoped_release nogil;
  par(threads, tasks, [&](int t0, int t1) {
    for (int t = t0; t < t1; ++t) {
      const int64_t b = t * kChunk, e = std::min(n, b + kChunk);
      int64_t i = vec ? b + vec(xp + b, e - b, scale, inv, zp, lo, hi, op + b, mp + b) : b;
      for (; i < e; ++i) fake_quant_value(xp[i], scale, inv, zp, lo, hi, op + i, mp + i);
    }
  });
}

}  // namespace
}  // namespace nask

PYBIND11_MODULE(_C, m) {
  using namespace nask;
  m.doc() = "nas low-bit CPU kernels (int8 / int4-weight, NHWC, AVX512-VNNI / AVX2 / scalar reference)";
  m.attr("build_flags") = NASK_BUILD_FLAGS;
  m.attr("compiler") = __VERSION__;
  m.attr("residual_bits") = kResidualBits;
  py::tuple isas(all_isas().size());
  for (size_t i = 0; i < all_isas().size(); ++i) isas[i] = all_isas()[i].name;
  m.attr("isas") = isas;  // weakest first: nas.kernels.isa.ISAS
  m.def("isa_supported", [](const std::string& s) { return parse_isa(s).supported(); }, py::arg("isa"),
        "Whether this CPU can run the kernels of the named ISA.");
  m.def("quantize_nchw", &quantize_nchw, py::arg("x"), py::arg("scale"), py::arg("zero_point"), py::arg("out"),
        "float32 NCHW -> uint8 NHWC on an affine grid (round half to even).");
  m.def("depthwise_weight_grad", &depthwise_weight_grad, py::arg("x"), py::arg("grad_out"), py::arg("k"),
        py::arg("stride"), py::arg("pad"), py::arg("out"), py::arg("threads"), py::arg("isa"),
        "Float32 weight gradient of an NHWC depthwise convolution (training): out[i * k + j, c]; the result does "
        "not depend on the thread count.");
  m.def("fake_quant", &fake_quant, py::arg("x"), py::arg("scale"), py::arg("zero_point"), py::arg("qmin"),
        py::arg("qmax"), py::arg("out"), py::arg("mask"), py::arg("threads"), py::arg("isa"),
        "Float32 fake quantization: out = (clamp(rne(x / scale) + zp, qmin, qmax) - zp) * scale (x times the float "
        "reciprocal of scale, as PyTorch) and mask = 1 where rne(x / scale) + zp lies in [qmin, qmax].");
  py::class_<Gemm, std::shared_ptr<Gemm>>(m, "Gemm")
      .def(py::init<const py::object&, const py::object&, int, const py::object&, const py::object&, int, int, int,
                    const py::object&, int, const py::object&, int, const std::string&, bool, const py::object&>(),
           py::arg("weight"), py::arg("bias"), py::arg("in_zp"), py::arg("multiplier"), py::arg("shift"),
           py::arg("out_zp"), py::arg("act_min"), py::arg("act_max"), py::arg("lut"), py::arg("bits"),
           py::arg("sub_scales"), py::arg("group_size"), py::arg("isa"), py::arg("out_int32"), py::arg("residual"))
      .def("run", &Gemm::run, py::arg("x"), py::arg("out"), py::arg("residual"), py::arg("threads"))
      .def_property_readonly("n", &Gemm::n)
      .def_property_readonly("k", &Gemm::k)
      .def_property_readonly("isa", &Gemm::isa_name)
      .def_property_readonly("packed_bytes", &Gemm::packed_bytes);
  py::class_<Conv>(m, "Conv")
      .def(py::init<const py::object&, int, const py::object&, int, const py::object&, const py::object&, int, int, int,
                    const py::object&, const std::string&>(),
           py::arg("weight"), py::arg("stride"), py::arg("bias"), py::arg("in_zp"), py::arg("multiplier"),
           py::arg("shift"), py::arg("out_zp"), py::arg("act_min"), py::arg("act_max"), py::arg("lut"), py::arg("isa"))
      .def("run", &Conv::run, py::arg("x"), py::arg("out"), py::arg("threads"));
  py::class_<Depthwise>(m, "Depthwise")
      .def(py::init<const py::object&, int, const py::object&, int, const py::object&, const py::object&, int, int, int,
                    const py::object&, const std::string&>(),
           py::arg("weight"), py::arg("stride"), py::arg("bias"), py::arg("in_zp"), py::arg("multiplier"),
           py::arg("shift"), py::arg("out_zp"), py::arg("act_min"), py::arg("act_max"), py::arg("lut"), py::arg("isa"))
      .def("run", &Depthwise::run, py::arg("x"), py::arg("out"), py::arg("threads"));
  py::class_<Pool, std::shared_ptr<Pool>>(m, "Pool")
      .def(py::init<int, int, int32_t, int32_t, int, const std::string&>(), py::arg("hw"), py::arg("in_zp"),
           py::arg("multiplier"), py::arg("shift"), py::arg("out_zp"), py::arg("isa"))
      .def("run", &Pool::run, py::arg("x"), py::arg("out"), py::arg("threads"));
  py::class_<Plan>(m, "Plan")
      .def(py::init<const py::list&, const py::list&, const py::list&, const py::list&>(), py::arg("ops"),
           py::arg("xs"), py::arg("outs"), py::arg("residuals"))
      .def("run", &Plan::run, py::arg("threads"))
      .def("__len__", &Plan::size);
  py::class_<SqueezeExcite>(m, "SqueezeExcite")
      .def(py::init<std::shared_ptr<Pool>, std::shared_ptr<Gemm>, std::shared_ptr<Gemm>, int, int32_t, int32_t, int,
                    const std::string&>(),
           py::arg("pool"), py::arg("fc1"), py::arg("fc2"), py::arg("in_zp"), py::arg("multiplier"), py::arg("shift"),
           py::arg("out_zp"), py::arg("isa"))
      .def("run", &SqueezeExcite::run, py::arg("x"), py::arg("out"), py::arg("threads"));
}
