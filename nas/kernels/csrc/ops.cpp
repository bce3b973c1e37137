// The kernel ops without Python (ops.h).
#include "ops.h"

namespace nask {
namespace {

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument(msg); }

}  // namespace

// ---------------------------------------------------------------- checks
std::string dims_str(const std::vector<int64_t>& dims) {
  std::string s = "(";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + (dims.size() == 1 ? ",)" : ")");
}

void check_range(int64_t v, int64_t lo, int64_t hi, const char* name) {
  if (v < lo || v > hi)
    fail(std::string(name) + "=" + std::to_string(v) + " outside [" + std::to_string(lo) + ", " + std::to_string(hi) +
         "]");
}

int check_threads(int threads) {
  check_range(threads, 1, 1024, "threads");
  return threads;
}

const Isa& parse_isa(const std::string& name) {
  if (const Isa* isa = find_isa(name)) return *isa;
  std::string known;
  for (const Isa& isa : all_isas()) known += (known.empty() ? "'" : ", '") + isa.name + "'";
  fail("isa: expected one of " + known + ", got '" + name + "'");
}

const Isa& checked_isa(const std::string& name) {
  const Isa& isa = parse_isa(name);
  if (!isa.supported()) fail("isa '" + name + "' is not supported by this CPU");
  return isa;
}

float checked_scale(int32_t multiplier, int32_t shift) {
  check_range(multiplier, 0, INT32_MAX, "multiplier");
  check_range(shift, -31, 30, "shift");
  return scale_of(multiplier, shift);
}

void fill_requant(Requant& q, int n, const RequantParams& p) {
  check_range(p.out_zp, 0, 255, "out_zp");
  check_range(p.act_min, 0, 255, "act_min");
  check_range(p.act_max, p.act_min, 255, "act_max");
  q.resize(n);
  for (int c = 0; c < n; ++c) {
    check_range(p.multiplier[c], 0, INT32_MAX, "multiplier");
    check_range(p.shift[c], -31, 30, "shift");
    q.scale[c] = scale_of(p.multiplier[c], p.shift[c]);
  }
  q.zp = p.out_zp;
  q.lo = p.act_min;
  q.hi = p.act_max;
  if (p.lut) q.lut32.assign(p.lut, p.lut + 256);
}

// ---------------------------------------------------------------- Gemm
Gemm::Gemm(const GemmParams& p) {
  isa_ = &checked_isa(p.isa);
  if (p.bits != 8 && p.bits != 4) fail("bits: expected 8 or 4, got " + std::to_string(p.bits));
  const int n = p.n, k = p.k;
  if (n < 1 || k < 1) fail("weight: empty shape " + dims_str({n, k}));
  if (k > (1 << 16)) fail("weight: K=" + std::to_string(k) + " too large (max 65536)");
  check_range(p.in_zp, 0, 255, "in_zp");
  const int8_t* wp = p.weight;
  const int lim = p.bits == 4 ? 7 : 127;
  for (int64_t i = 0; i < static_cast<int64_t>(n) * k; ++i)
    if (wp[i] < -lim || wp[i] > lim)
      fail("weight: values must lie in [-" + std::to_string(lim) + ", " + std::to_string(lim) +
           "] for bits=" + std::to_string(p.bits));
  pw_.n = n;
  pw_.k = k;
  pw_.bits = p.bits;
  const int32_t* subs = p.sub_scales;
  const int group_size = p.group_size;
  if (subs) {
    if (p.bits != 4) fail("sub_scales: group scales are only supported with bits=4");
    if (group_size < 4 || group_size % 4 != 0)
      fail("group_size: expected a positive multiple of 4, got " + std::to_string(group_size));
    const int ng = (k + group_size - 1) / group_size;
    if (p.sub_groups != ng)
      fail("sub_scales: bad shape " + dims_str({n, p.sub_groups}) + " (dim 1 must be " + std::to_string(ng) + ")");
    for (int64_t i = 0; i < static_cast<int64_t>(n) * ng; ++i) check_range(subs[i], 0, 255, "sub_scales");
    if (static_cast<int64_t>(k) * 255 * 255 * 8 >= (1ll << 31)) fail("weight: K too large for grouped int4 accumulation");
    pw_.grouped = true;
    pw_.group = group_size;
    pw_.ngroups = ng;
  }
  fill_requant(q_, n, p.requant);
  q_.out_int32 = p.out_int32;
  const int32_t* bp = p.bias;
  std::vector<int64_t> bound(n);
  for (int j = 0; j < n; ++j) {
    int64_t wsum = 0, wabs = 0;
    for (int i = 0; i < k; ++i) {
      const int64_t sub = subs ? subs[j * pw_.ngroups + i / group_size] : 1;
      const int64_t v = static_cast<int64_t>(wp[static_cast<int64_t>(j) * k + i]) * sub;
      wsum += v;
      wabs += v < 0 ? -v : v;
    }
    const int64_t be = static_cast<int64_t>(bp[j]) - static_cast<int64_t>(p.in_zp) * wsum;
    if (be < INT32_MIN / 2 || be > INT32_MAX / 2) fail("bias: out of int32 range after zero-point folding");
    q_.bias[j] = static_cast<int32_t>(be);
    bound[j] = 255 * wabs + (be < 0 ? -be : be);
  }
  if (p.residual) {
    if (p.out_int32) fail("residual: not supported with out_int32");
    const ResidualParams& r = *p.residual;
    check_range(r.zp, 0, 255, "residual zero point");
    check_range(r.multiplier, 0, INT32_MAX, "residual multiplier");
    check_range(r.shift, -31, 30, "residual shift");
    q_.residual = true;
    q_.res_zp = r.zp;
    // both multipliers carry 2^kResidualBits; dividing the float32 scales by it is exact
    q_.res_scale = std::ldexp(scale_of(r.multiplier, r.shift), -kResidualBits);
    for (int j = 0; j < n; ++j) q_.scale[j] = std::ldexp(q_.scale[j], -kResidualBits);
  }
  q_.check_overflow(bound);
  isa_->kernels.pack_gemm(pw_, wp, subs);
  view_ = q_.view();
}

Task Gemm::task(const uint8_t* x, int m, void* out, const uint8_t* res) const {
  if (m < 1) fail("x: needs at least one row");
  if (q_.residual && !res) fail("residual: this op was built with a residual; pass the input");
  if (!q_.residual && res) fail("residual: this op was built without residual parameters");
  return [this, x, m, out, res](int threads) { run_raw(x, m, out, res, threads); };
}

void Gemm::run_conv(const ConvGeom& g, int m, void* out, int threads) const {
  GemmArgs a;
  a.m = m;
  a.conv = &g;
  a.w = &pw_;
  a.q = view_;
  a.out = out;
  a.ldo = pw_.n;
  isa_->kernels.gemm(a, threads);
}

void Gemm::run_raw(const uint8_t* x, int m, void* out, const uint8_t* res, int threads) const {
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

// ---------------------------------------------------------------- Conv
Conv::Conv(const ConvParams& p) {
  cout_ = p.cout;
  k_ = p.kh;
  cin_ = p.cin;
  if (p.kw != k_ || (k_ != 1 && k_ != 3 && k_ != 5 && k_ != 7))
    fail("weight: expected shape (Cout, k, k, Cin) with k in {1, 3, 5, 7}, got " +
         dims_str({p.cout, p.kh, p.kw, p.cin}));
  if (p.stride != 1 && p.stride != 2) fail("stride: expected 1 or 2, got " + std::to_string(p.stride));
  stride_ = p.stride;
  in_zp_ = p.in_zp;
  direct_ = parse_isa(p.isa).kernels.direct_conv;
  GemmParams g;
  g.weight = p.weight;  // [Cout][k * k * Cin]
  g.n = cout_;
  g.k = k_ * k_ * cin_;
  std::vector<int8_t> rows;
  if (direct_) {  // [Cout][k][seg4]: each kernel row padded with zeros to a multiple of 4 bytes
    seg4_ = conv_seg4(k_, cin_);
    rows.resize(static_cast<size_t>(cout_) * k_ * seg4_);
    pack_conv_rows(p.weight, cout_, k_, cin_, rows.data());
    g.weight = rows.data();
    g.k = k_ * seg4_;
  }
  g.bias = p.bias;
  g.in_zp = p.in_zp;
  g.requant = p.requant;
  g.isa = p.isa;
  gemm_ = std::make_unique<Gemm>(g);
}

Task Conv::task(const uint8_t* x, int b, int h, int w, uint8_t* out) const {
  if (b < 1 || h < 1 || w < 1) fail("x: empty shape " + dims_str({b, h, w, cin_}));
  const int ho = out_size(h), wo = out_size(w);
  return [this, x, out, b, h, w, ho, wo](int threads) { run_raw(x, out, b, h, w, ho, wo, threads); };
}

namespace {

// im2col row of output row oy of one image xi (h x w x cin): wo x k x k x cin bytes, padding = zp.
void im2col_row(const uint8_t* xi, int h, int w, int cin, int k, int s, int zp, int oy, int wo, uint8_t* d) {
  const int kk = k * k * cin, pad = k / 2;
  for (int ox = 0; ox < wo; ++ox, d += kk) {
    for (int ky = 0; ky < k; ++ky) {
      const int iy = oy * s + ky - pad;
      uint8_t* dr = d + ky * k * cin;
      if (iy < 0 || iy >= h) {
        std::memset(dr, zp, static_cast<size_t>(k) * cin);
        continue;
      }
      const int ix0 = ox * s - pad;
      const uint8_t* src = xi + static_cast<size_t>(iy) * w * cin;
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

// Row y (of h + 2p, p = k / 2) of the zero-point padded copy of one image xi (h x w x cin): (w + 2p) x cin bytes.
void padded_row(const uint8_t* xi, int h, int w, int cin, int p, int zp, int y, uint8_t* d) {
  const size_t inner = static_cast<size_t>(w) * cin, side = static_cast<size_t>(p) * cin;
  y -= p;
  if (y < 0 || y >= h) {
    std::memset(d, zp, inner + 2 * side);
  } else {
    std::memset(d, zp, side);
    std::memcpy(d + side, xi + static_cast<size_t>(y) * inner, inner);
    std::memset(d + side + inner, zp, side);
  }
}

constexpr size_t kPadSlack = 64;  // bytes past the padded rows: the direct GEMM reads kernel rows in seg4 bytes

}  // namespace

void Conv::run_raw(const uint8_t* xp, uint8_t* op, int b, int h, int w, int ho, int wo, int threads) const {
  if (direct_) {
    run_direct(xp, op, b, h, w, ho, wo, threads);
    return;
  }
  const int kk = k_ * k_ * cin_;
  const int m = b * ho * wo;
  thread_local std::vector<uint8_t> col;  // reused across calls (no page faults per run)
  if (col.size() < static_cast<size_t>(m) * kk) col.resize(static_cast<size_t>(m) * kk);
  uint8_t* cp = col.data();
  par(threads, b * ho, [&](int r0, int r1) {
    for (int r = r0; r < r1; ++r)
      im2col_row(xp + static_cast<size_t>(r / ho) * h * w * cin_, h, w, cin_, k_, stride_, in_zp_, r % ho, wo,
                 cp + static_cast<size_t>(r) * wo * kk);
  });
  gemm_->run_raw(cp, m, op, nullptr, threads);
}

// Zero-point padded copy of the input, then the GEMM reads the kernel rows in place (ConvGeom).
void Conv::run_direct(const uint8_t* xp, uint8_t* op, int b, int h, int w, int ho, int wo, int threads) const {
  const int p = k_ / 2, hp = h + 2 * p, wp = w + 2 * p;
  const size_t row = static_cast<size_t>(wp) * cin_;
  thread_local std::vector<uint8_t> padded;  // reused across calls (no page faults per run)
  const size_t need_bytes = static_cast<size_t>(b) * hp * row + kPadSlack;
  if (padded.size() < need_bytes) padded.resize(need_bytes);
  uint8_t* pb = padded.data();
  par(threads, b * hp, [&](int r0, int r1) {
    for (int r = r0; r < r1; ++r)
      padded_row(xp + static_cast<size_t>(r / hp) * h * w * cin_, h, w, cin_, p, in_zp_, r % hp,
                 pb + static_cast<size_t>(r) * row);
  });
  std::memset(pb + static_cast<size_t>(b) * hp * row, in_zp_, kPadSlack);
  gemm_->run_conv(geom(pb, ho, wo, hp, wp), b * ho * wo, op, threads);
}

ConvGeom Conv::geom(const uint8_t* pad, int ho, int wo, int hp, int wp) const {
  ConvGeom g;
  g.pad = pad;
  g.ho = ho;
  g.wo = wo;
  g.hp = hp;
  g.wp = wp;
  g.cin = cin_;
  g.stride = stride_;
  g.k = k_;
  g.seg4 = seg4_;
  return g;
}

size_t Conv::rows_scratch_bytes(int w, int cin, int k, int stride, int rows) {
  const int p = k / 2, wo = (w + 2 * p - k) / stride + 1;
  const size_t direct = static_cast<size_t>((rows - 1) * stride + k) * (w + 2 * p) * cin + kPadSlack;
  const size_t im2col = static_cast<size_t>(rows) * wo * k * k * cin;
  return std::max(direct, im2col);
}

void Conv::run_rows(const uint8_t* x, int h, int w, int oy0, int oy1, uint8_t* out, uint8_t* scratch) const {
  const int wo = out_size(w), rows = oy1 - oy0;
  if (direct_) {  // padded rows [oy0 * s, (oy1 - 1) * s + k) of the padded image: a band of run_direct's copy
    const int p = k_ / 2, wp = w + 2 * p, held = (rows - 1) * stride_ + k_;
    const size_t row = static_cast<size_t>(wp) * cin_;
    for (int r = 0; r < held; ++r) padded_row(x, h, w, cin_, p, in_zp_, oy0 * stride_ + r, scratch + r * row);
    std::memset(scratch + held * row, in_zp_, kPadSlack);
    gemm_->run_conv(geom(scratch, rows, wo, held, wp), rows * wo, out, 1);
    return;
  }
  const size_t kk = static_cast<size_t>(k_) * k_ * cin_;
  for (int r = 0; r < rows; ++r) im2col_row(x, h, w, cin_, k_, stride_, in_zp_, oy0 + r, wo, scratch + r * wo * kk);
  gemm_->run_raw(scratch, rows * wo, out, nullptr, 1);
}

// ---------------------------------------------------------------- Depthwise
Depthwise::Depthwise(const DepthwiseParams& p) {
  isa_ = &checked_isa(p.isa);
  c_ = p.c;
  k_ = p.kh;
  if (c_ < 1 || p.kw != k_ || (k_ != 3 && k_ != 5 && k_ != 7))
    fail("weight: expected shape (C, k, k) with k in {3, 5, 7}, got " + dims_str({p.c, p.kh, p.kw}));
  if (p.stride != 1 && p.stride != 2) fail("stride: expected 1 or 2, got " + std::to_string(p.stride));
  stride_ = p.stride;
  check_range(p.in_zp, 0, 255, "in_zp");
  in_zp_ = p.in_zp;
  fill_requant(q_, c_, p.requant);
  const int32_t* bp = p.bias;
  for (int c = 0; c < c_; ++c) q_.bias[c] = bp[c];
  const int8_t* wp = p.weight;
  for (int64_t i = 0; i < static_cast<int64_t>(c_) * k_ * k_; ++i)
    if (wp[i] == -128) fail("weight: values must lie in [-127, 127]");
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

namespace {

// Whether byte ranges [a, a + an) and [b, b + bn) share a byte.
bool overlap(const void* a, size_t an, const void* b, size_t bn) {
  const uintptr_t pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return pa < pb + bn && pb < pa + an;
}

}  // namespace

Task Depthwise::task(const uint8_t* x, int b, int h, int w, uint8_t* out) const {
  if (b < 1 || h < 1 || w < 1) fail("x: empty shape " + dims_str({b, h, w, c_}));
  const size_t row = static_cast<size_t>(w) * c_, bytes = static_cast<size_t>(b) * h * row;
  if (overlap(x, bytes, out, static_cast<size_t>(b) * out_size(h) * out_size(w) * c_)) {
    // in place: only as ops.h dw_in_place_rows allows, every other overlap would read bytes already written
    const uintptr_t ahead = reinterpret_cast<uintptr_t>(x) - reinterpret_cast<uintptr_t>(out);
    const int64_t rows = reinterpret_cast<uintptr_t>(out) < reinterpret_cast<uintptr_t>(x) ? ahead / row : 0;
    if (stride_ != 1 || rows < dw_in_place_rows(1, k_))
      fail("out: overlaps x; in place needs stride 1 and out at least " + std::to_string(dw_in_place_rows(1, k_)) +
           " rows before x");
    return [this, x, b, h, w, out, rows](int threads) { run_in_place(x, b, h, w, out, rows, threads); };
  }
  const DwArgs a = args(x, b, h, w, out);
  const auto depthwise = isa_->kernels.depthwise;
  return [a, depthwise](int threads) { depthwise(a, threads); };
}

void Depthwise::run_in_place(const uint8_t* x, int b, int h, int w, uint8_t* out, int64_t rows, int threads) const {
  // one call where that is safe: one thread takes the rows in increasing order, or D rows clear every row at once
  if (threads == 1 || rows >= static_cast<int64_t>(b) * h + k_ / 2) {
    isa_->kernels.depthwise(args(x, b, h, w, out), threads);
    return;
  }
  // else waves of R = D - k / 2 output rows of one image, one parallel call each: the rows a wave writes over lie
  // before every row it reads (earlier images are done)
  const int wave = static_cast<int>(std::min<int64_t>(h, rows - k_ / 2));
  const size_t row = static_cast<size_t>(w) * c_;
  for (int bi = 0; bi < b; ++bi) {
    const uint8_t* xi = x + static_cast<size_t>(bi) * h * row;
    uint8_t* oi = out + static_cast<size_t>(bi) * h * row;
    for (int oy0 = 0; oy0 < h; oy0 += wave) {
      const int oy1 = std::min(h, oy0 + wave);
      run_rows(xi, h, w, 0, oy0, oy1, oi + static_cast<size_t>(oy0) * row, threads);
    }
  }
}

void Depthwise::run_rows(const uint8_t* x, int h, int w, int held, int oy0, int oy1, uint8_t* out,
                         int threads) const {
  DwArgs a = args(x, 1, h, w, out);
  a.held = held;
  a.oy0 = oy0;
  a.oy1 = oy1;
  isa_->kernels.depthwise(a, threads);
}

DwArgs Depthwise::args(const uint8_t* x, int b, int h, int w, uint8_t* out) const {
  DwArgs a;
  a.batch = b;
  a.h = h;
  a.w = w;
  a.c = c_;
  a.k = k_;
  a.stride = stride_;
  a.ho = out_size(h);
  a.wo = out_size(w);
  a.in_zp = in_zp_;
  a.x = x;
  a.wt = packed_.taps.data();
  a.dw_w = packed_.vw.as<int8_t>();
  a.dw_init = packed_.vinit.as<int32_t>();
  a.dw_scale = packed_.vscale.as<float>();
  a.cpad = packed_.cpad;
  a.q = view_;
  a.out = out;
  return a;
}

// ---------------------------------------------------------------- FusedBlock
namespace {

size_t up64(size_t v) { return (v + 63) & ~size_t(63); }

}  // namespace

FusedBlock::FusedBlock(std::shared_ptr<Gemm> expand, std::shared_ptr<Depthwise> dw, std::shared_ptr<Gemm> project,
                       int band, std::shared_ptr<Conv> stem)
    : expand_(std::move(expand)), dw_(std::move(dw)), project_(std::move(project)), band_(band),
      stem_(std::move(stem)) {
  if (!dw_) fail("dw: required");
  if (!project_ && !stem_) fail("project: required unless the head is the stem convolution");
  if (expand_ && stem_) fail("expand/stem: a fused step has one head op, got both");
  check_range(band, 0, 1 << 20, "band_rows");
  const Isa* isa = &dw_->isa();
  if ((project_ && &project_->isa() != isa) || (expand_ && &expand_->isa() != isa) ||
      (stem_ && &stem_->isa() != isa))
    fail("expand/stem/project: must be built for the same isa as the depthwise op");
  if (expand_ && (expand_->n() != dw_->c() || expand_->residual() || expand_->out_int32()))
    fail("expand: must be a plain uint8-output GEMM with as many outputs as the depthwise channels (" +
         std::to_string(dw_->c()) + ")");
  if (stem_ && stem_->cout() != dw_->c())
    fail("stem: must have as many output channels as the depthwise (" + std::to_string(dw_->c()) + "), got " +
         std::to_string(stem_->cout()));
  if (!project_) return;
  if (project_->k() != dw_->c() || project_->out_int32())
    fail("project: must be a uint8-output GEMM over the depthwise channels (" + std::to_string(dw_->c()) + ")");
  if (project_->residual() && stem_)
    fail("project: a residual block does not fuse with the stem (its residual reads the stem output)");
  if (project_->residual() && (dw_->stride() != 1 || project_->n() != cin()))
    fail("project: a residual block needs stride 1 and as many outputs as block inputs");
}

int FusedBlock::band_rows(int h, int w, int c, int k, int stride, int band, size_t budget) {
  const int ho = (h - 1) / stride + 1, wo = (w - 1) / stride + 1;
  if (band > 0) return std::min(band, ho);
  // bytes(rows) = ((rows - 1) * stride + k) * w * c (expanded) + rows * wo * c (depthwise out)
  const int64_t fixed = static_cast<int64_t>(k - stride) * w * c, per = (static_cast<int64_t>(stride) * w + wo) * c;
  const int64_t rows = (static_cast<int64_t>(budget) - fixed) / per;
  const int64_t least = (kMinPixels + wo - 1) / wo;
  const int64_t best = std::max(least, std::min<int64_t>(rows, (ho + kMinBands - 1) / kMinBands));
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(best, ho)));
}

namespace {

// One thread's band buffers: head rows (expand or stem output rows of a band, with its halo), the band's depthwise
// output (before project), the stem's padded input or im2col rows; byte offsets 64-byte aligned.
struct BandLayout {
  int band = 0, held = 0, stem_rows = 0;
  size_t head = 0, dw = 0, stem = 0;
  size_t total() const { return head + dw + stem; }
};

// h, w: the depthwise's input; stem_k > 0: a stem head over input width stem_w with stem_cin channels.
BandLayout band_layout(int h, int w, int c, int k, int stride, bool head, bool project, int band, int stem_w = 0,
                       int stem_cin = 0, int stem_k = 0, int stem_stride = 1) {
  BandLayout l;
  l.band = FusedBlock::band_rows(h, w, c, k, stride, band,
                                 stem_k > 0 ? FusedBlock::kStemBandBytes : FusedBlock::kBandBytes);
  l.held = std::min(h, (l.band - 1) * stride + k);
  const int wo = (w - 1) / stride + 1;
  l.head = head ? up64(static_cast<size_t>(l.held) * w * c) : 0;
  l.dw = project ? up64(static_cast<size_t>(l.band) * wo * c) : 0;
  if (stem_k > 0) {
    l.stem_rows = FusedBlock::stem_rows(w, l.held);
    l.stem = up64(Conv::rows_scratch_bytes(stem_w, stem_cin, stem_k, stem_stride, l.stem_rows));
  }
  return l;
}

int conv_size(int in, int k, int stride) { return (in + 2 * (k / 2) - k) / stride + 1; }

}  // namespace

size_t FusedBlock::scratch_bytes(int h, int w, int c, int k, int stride, bool expand, int band) {
  return band_layout(h, w, c, k, stride, expand, true, band).total();
}

size_t FusedBlock::stem_scratch_bytes(int h, int w, int cin, int stem_k, int stem_stride, int c, int k, int stride,
                                      bool project, int band) {
  return band_layout(conv_size(h, stem_k, stem_stride), conv_size(w, stem_k, stem_stride), c, k, stride, true,
                     project, band, w, cin, stem_k, stem_stride)
      .total();
}

size_t FusedBlock::scratch_bytes(int h, int w) const {
  if (stem_)
    return stem_scratch_bytes(h, w, stem_->cin(), stem_->k(), stem_->stride(), dw_->c(), dw_->k(), dw_->stride(),
                              project_ != nullptr, band_);
  return scratch_bytes(h, w, dw_->c(), dw_->k(), dw_->stride(), expand_ != nullptr, band_);
}

Task FusedBlock::task(const uint8_t* x, int b, int h, int w, uint8_t* out, uint8_t* scratch, int slots) const {
  if (b < 1 || h < 1 || w < 1) fail("x: empty shape " + dims_str({b, h, w, cin()}));
  if (scratch && slots < 1) fail("scratch: needs at least one slot");
  return [this, x, b, h, w, out, scratch, slots](int threads) { run_raw(x, b, h, w, out, scratch, slots, threads); };
}

void FusedBlock::run_raw(const uint8_t* x, int b, int h, int w, uint8_t* out, uint8_t* scratch, int slots,
                         int threads) const {
  const int ho = out_size(h), rows = b * ho;
  const size_t per = scratch_bytes(h, w);
  AlignedBuf own;
  if (!scratch) {
    slots = threads;
    own.resize(per * slots);
    scratch = own.ptr;
  }
  // one strip per thread (fixed bounds, so a strip's buffers are its own whichever thread runs it)
  const int strips = std::max(1, std::min({threads, slots, rows}));
  par(strips, strips, [&](int t0, int t1) {
    for (int t = t0; t < t1; ++t) {
      const int r0 = static_cast<int>(static_cast<int64_t>(rows) * t / strips);
      const int r1 = static_cast<int>(static_cast<int64_t>(rows) * (t + 1) / strips);
      run_strip(x, h, w, out, scratch + per * t, r0, r1);
    }
  });
}

void FusedBlock::run_strip(const uint8_t* x, int h, int w, uint8_t* out, uint8_t* scratch, int r0, int r1) const {
  const int c = dw_->c(), k = dw_->k(), s = dw_->stride(), pad = k / 2, ci = cin(), co = cout();
  const int h1 = head_size(h), w1 = head_size(w);  // the depthwise's input
  const int ho = dw_->out_size(h1), wo = dw_->out_size(w1);
  const bool head = expand_ || stem_;
  const BandLayout l = stem_ ? band_layout(h1, w1, c, k, s, true, project_ != nullptr, band_, w, ci, stem_->k(),
                                           stem_->stride())
                             : band_layout(h1, w1, c, k, s, head, true, band_);
  const size_t row_c = static_cast<size_t>(w1) * c;
  uint8_t* ebuf = scratch;  // head rows of image `img` up to `hi`, in a ring of l.held rows (row y at y % l.held)
  uint8_t* dbuf = scratch + l.head;
  uint8_t* sbuf = dbuf + l.dw;  // the stem's padded input or im2col rows
  int img = -1, hi = 0;
  for (int r = r0; r < r1;) {
    const int bi = r / ho, oy0 = r % ho;
    const int oy1 = std::min({ho, oy0 + l.band, oy0 + (r1 - r)});
    const int need_lo = std::max(0, oy0 * s - pad), need_hi = std::min(h1, (oy1 - 1) * s - pad + k);
    const uint8_t* xi = x + static_cast<size_t>(bi) * h * w * ci;
    uint8_t* oband = out + (static_cast<size_t>(bi) * ho + oy0) * wo * co;
    uint8_t* dst = project_ ? dbuf : oband;  // without project the depthwise writes the step's output
    if (head) {
      if (bi != img || need_lo >= hi) {  // nothing held is read again
        img = bi;
        hi = need_lo;
      }
      // the new rows [hi, need_hi) overwrite the slots of rows below need_lo (a band's window [need_lo, need_hi)
      // has at most l.held rows); the halo rows [need_lo, hi) stay where they are. Split where the ring wraps.
      for (int y = hi; y < need_hi;) {
        const int slot = y % l.held, y1 = std::min(need_hi, y + l.held - slot);
        if (expand_) {
          expand_->run_raw(xi + static_cast<size_t>(y) * w * ci, (y1 - y) * w, ebuf + slot * row_c, nullptr, 1);
        } else {
          for (int z = y; z < y1; z += l.stem_rows)
            stem_->run_rows(xi, h, w, z, std::min(y1, z + l.stem_rows), ebuf + (z % l.held) * row_c, sbuf);
        }
        y = y1;
      }
      hi = std::max(hi, need_hi);
      dw_->run_rows(ebuf, h1, w1, l.held, oy0, oy1, dst, 1);
    } else {
      dw_->run_rows(xi, h, w, 0, oy0, oy1, dst, 1);
    }
    if (project_) {
      // residual blocks have stride 1 and cin == cout (and no stem): output row oy adds input row oy
      const uint8_t* res = project_->residual() ? xi + static_cast<size_t>(oy0) * w * ci : nullptr;
      project_->run_raw(dbuf, (oy1 - oy0) * wo, oband, res, 1);
    }
    r += oy1 - oy0;
  }
}

// ---------------------------------------------------------------- Pool
Pool::Pool(int hw, int in_zp, int32_t multiplier, int32_t shift, int out_zp, const std::string& isa) {
  isa_ = &checked_isa(isa);
  check_range(hw, 1, 1 << 22, "hw");
  check_range(in_zp, 0, 255, "in_zp");
  check_range(out_zp, 0, 255, "out_zp");
  a_.hw = hw;
  a_.in_zp = in_zp;
  a_.out_zp = out_zp;
  a_.scale = checked_scale(multiplier, shift);
}

Task Pool::task(const uint8_t* x, int b, int h, int w, int c, uint8_t* out) const {
  if (static_cast<int64_t>(h) * w != a_.hw)
    fail("x: spatial size " + dims_str({b, h, w, c}) + " does not match hw=" + std::to_string(a_.hw));
  if (b < 1 || c < 1) fail("x: empty shape " + dims_str({b, h, w, c}));
  return [this, x, b, c, out](int threads) { run_raw(x, b, c, out, threads); };
}

void Pool::run_raw(const uint8_t* x, int batch, int c, uint8_t* out, int threads) const {
  PoolArgs a = a_;
  a.batch = batch;
  a.c = c;
  a.x = x;
  a.out = out;
  isa_->kernels.pool(a, threads);
}

// ---------------------------------------------------------------- SqueezeExcite
SqueezeExcite::SqueezeExcite(std::shared_ptr<Pool> pool, std::shared_ptr<Gemm> fc1, std::shared_ptr<Gemm> fc2,
                             int in_zp, int32_t multiplier, int32_t shift, int out_zp, const std::string& isa)
    : pool_(std::move(pool)), fc1_(std::move(fc1)), fc2_(std::move(fc2)) {
  isa_ = &checked_isa(isa);
  if (fc1_->k() != fc2_->n() || fc1_->n() != fc2_->k()) fail("fc1/fc2: shapes do not chain (C -> S -> C)");
  if (fc1_->residual() || fc2_->residual() || fc1_->out_int32() || fc2_->out_int32())
    fail("fc1/fc2: must be plain uint8-output GEMMs");
  if (&fc1_->isa() != isa_ || &fc2_->isa() != isa_) fail("fc1/fc2: must be built for the same isa as the SE op");
  check_range(in_zp, 0, 255, "in_zp");
  check_range(out_zp, 0, 255, "out_zp");
  s_.in_zp = in_zp;
  s_.out_zp = out_zp;
  s_.scale = checked_scale(multiplier, shift);
}

Task SqueezeExcite::task(const uint8_t* x, int b, int h, int w, uint8_t* out) const {
  const int c = fc1_->k();
  if (b < 1) fail("x: empty batch");
  if (static_cast<int64_t>(h) * w != pool_->hw())
    fail("x: spatial size " + dims_str({b, h, w, c}) + " does not match hw=" + std::to_string(pool_->hw()));
  const int hw = h * w;
  const size_t bytes = static_cast<size_t>(b) * hw * c;
  // in place (out == x) is exact: the pool reads all of x first, the scale reads each pixel before writing it
  if (out != x && overlap(x, bytes, out, bytes)) fail("out: overlaps x; only out == x (in place) may");
  return [this, x, out, b, hw, c](int threads) { run_raw(x, out, b, hw, c, threads); };
}

void SqueezeExcite::run_raw(const uint8_t* xp, uint8_t* op, int b, int hw, int c, int threads) const {
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

// ---------------------------------------------------------------- Plan, input quantization
void Plan::run(int threads) const {
  check_threads(threads);
  for (const Task& t : tasks_) t(threads);
}

namespace {

// A unit of placement: a buffer and the buffers written in place over it (each at `rel` bytes from the unit's start).
struct Unit {
  std::vector<size_t> members;
  std::vector<int64_t> rel;
  size_t extent = 0;     // bytes from the unit's start to its last member's end
  int first = 0, last = 0;  // steps from the first write to the last read of any member
};

// Places units in `order`, each at the lowest offset where every member is clear of the members placed already
// whose lives overlap its own.
ArenaPlan place(const std::vector<size_t>& order, const std::vector<Unit>& units, const std::vector<size_t>& sizes,
                const std::vector<int>& first, const std::vector<int>& last, size_t align) {
  auto up = [align](int64_t v) { return (v + static_cast<int64_t>(align) - 1) & ~static_cast<int64_t>(align - 1); };
  ArenaPlan plan;
  plan.offsets.assign(sizes.size(), 0);
  std::vector<size_t> placed;  // buffers
  for (size_t u : order) {
    const Unit& unit = units[u];
    // the unit may not start in (lo, hi): there a member would share a byte with a placed buffer alive with it
    std::vector<std::pair<int64_t, int64_t>> banned;
    for (size_t m = 0; m < unit.members.size(); ++m) {
      const size_t i = unit.members[m];
      const int64_t rel = unit.rel[m], size = static_cast<int64_t>(sizes[i]);
      for (size_t j : placed)
        if (first[j] <= last[i] && first[i] <= last[j])
          banned.emplace_back(static_cast<int64_t>(plan.offsets[j]) - rel - size,
                              static_cast<int64_t>(plan.offsets[j] + sizes[j]) - rel);
    }
    std::sort(banned.begin(), banned.end());
    int64_t at = 0;
    for (const auto& [lo, hi] : banned) {
      if (at <= lo) break;
      at = std::max(at, up(hi));
    }
    for (size_t m = 0; m < unit.members.size(); ++m) {
      plan.offsets[unit.members[m]] = static_cast<size_t>(at + unit.rel[m]);
      placed.push_back(unit.members[m]);
    }
    plan.bytes = std::max(plan.bytes, static_cast<size_t>(at) + unit.extent);
  }
  return plan;
}

}  // namespace

ArenaPlan plan_arena(const std::vector<size_t>& sizes, const std::vector<int>& first, const std::vector<int>& last,
                     size_t align, const std::vector<int>& input, const std::vector<int64_t>& headroom) {
  const size_t n = sizes.size();
  if (first.size() != n || last.size() != n) fail("plan_arena: sizes, first and last must have the same length");
  if (align == 0 || (align & (align - 1)) != 0) fail("plan_arena: align must be a power of two");
  if (input.size() != headroom.size() || (!input.empty() && input.size() != n))
    fail("plan_arena: input and headroom must both be empty or have one entry per buffer");
  for (size_t i = 0; i < n; ++i)
    if (first[i] > last[i]) fail("plan_arena: buffer " + std::to_string(i) + " is last read before it is written");
  // in place (ops.h in_place_pays): buffer i joins the unit of its input, `headroom` bytes before it
  std::vector<bool> in_place(n, false);
  std::vector<size_t> unit_of(n);
  std::vector<int64_t> rel(n, 0);
  std::vector<Unit> units;
  for (size_t i = 0; i < n; ++i) {
    if (!input.empty() && headroom[i] != kNotInPlace) {
      const int src = input[i];
      if (src < 0 || static_cast<size_t>(src) >= i || headroom[i] < 0 || headroom[i] % static_cast<int64_t>(align))
        fail("plan_arena: buffer " + std::to_string(i) + ": input must be an earlier buffer and headroom a "
             "multiple of align (or kNotInPlace)");
      if (first[src] > first[i])
        fail("plan_arena: buffer " + std::to_string(i) + " is written before its input");
      in_place[i] = in_place_pays(headroom[i], sizes[src], last[src] > first[i]);
    }
    if (in_place[i]) {
      const size_t u = unit_of[input[i]];
      unit_of[i] = u;
      rel[i] = rel[input[i]] - headroom[i];
      units[u].members.push_back(i);
      units[u].first = std::min(units[u].first, first[i]);
      units[u].last = std::max(units[u].last, last[i]);
    } else {
      unit_of[i] = units.size();
      units.push_back(Unit{{i}, {}, 0, first[i], last[i]});
    }
  }
  for (Unit& u : units) {  // offsets from the unit's start, which its lowest member sets
    int64_t lo = 0;
    for (size_t i : u.members) lo = std::min(lo, rel[i]);
    for (size_t i : u.members) {
      u.rel.push_back(rel[i] - lo);
      u.extent = std::max(u.extent, static_cast<size_t>(rel[i] - lo) + sizes[i]);
    }
  }
  // Four placement orders, the smallest arena kept (ties: the first): largest first (greedy by size), largest
  // size x lifetime first, in execution order (each buffer where the ones it outlives left room) and in reverse
  // buffer order (the steps' scratch, then the outputs from the last: a network's first steps fitted around the
  // buffers after them; MobileNetV2-0.35 at 144 px with its stem fused on 2 threads: 174,848 bytes in the best of
  // the other three, 145,152, the most any step holds, in this one). Which wins depends on the network; trying all
  // costs microseconds.
  const size_t m = units.size();
  std::vector<size_t> by_size(m), by_area(m), by_time(m), by_time_reversed(m);
  for (size_t i = 0; i < m; ++i) by_size[i] = by_area[i] = by_time[i] = i;
  for (size_t i = 0; i < m; ++i) by_time_reversed[i] = m - 1 - i;
  std::stable_sort(by_size.begin(), by_size.end(), [&](size_t a, size_t b) { return units[a].extent > units[b].extent; });
  auto area = [&](size_t i) { return units[i].extent * static_cast<size_t>(units[i].last - units[i].first + 1); };
  std::stable_sort(by_area.begin(), by_area.end(), [&](size_t a, size_t b) { return area(a) > area(b); });
  ArenaPlan best;
  bool have = false;
  for (const std::vector<size_t>* order : {&by_size, &by_area, &by_time, &by_time_reversed}) {
    ArenaPlan p = place(*order, units, sizes, first, last, align);
    if (!have || p.bytes < best.bytes) best = std::move(p), have = true;
  }
  best.in_place = in_place;
  return best;
}

void quantize_nchw(const float* x, int n, int c, int h, int w, float scale, int zp, uint8_t* out) {
  check_range(zp, 0, 255, "zero_point");
  if (!(scale > 0.0f)) fail("scale: must be > 0");
  // The strongest supported ISA with a vector RGB path, whatever the active ISA: the result is the same bits.
  decltype(KernelTable::quantize_rgb) quantize_rgb = nullptr;
  for (const Isa& isa : all_isas())
    if (isa.kernels.quantize_rgb && isa.supported()) quantize_rgb = isa.kernels.quantize_rgb;
  const float fzp = static_cast<float>(zp);
  const size_t hw = static_cast<size_t>(h) * w;
  const bool fast = c == 3 && quantize_rgb;
  std::vector<uint8_t> tmp(hw);
  uint8_t* t = tmp.data();
  for (int b = 0; b < n; ++b) {
    const float* xb = x + static_cast<size_t>(b) * c * hw;
    uint8_t* ob = out + static_cast<size_t>(b) * hw * c;
    if (fast) {
      const size_t p0 = static_cast<size_t>(quantize_rgb(xb, static_cast<int64_t>(hw), scale, fzp, ob));
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

}  // namespace nask
