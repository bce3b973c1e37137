// Weight packing for every ISA's kernels (layouts in pack.h).
#include "pack.h"

namespace nask {
namespace {

// Blocks of vw channels x kg consecutive k values per step (the register layout of the vector GEMMs).
void pack_gemm_blocked(PackedWeights& pw, const int8_t* w, const int32_t* subs, int vw, int kg) {
  const int n = pw.n, k = pw.k;
  auto W = [&](int j, int i) -> int8_t { return (j < n && i < k) ? w[static_cast<int64_t>(j) * k + i] : 0; };
  const int nvec = (n + vw - 1) / vw, steps = (k + kg - 1) / kg;
  const int step_bytes = vw * kg;                // int8 bytes per step
  const int half = step_bytes / 2;
  const size_t per_step = pw.bits == 4 ? static_cast<size_t>(half) : static_cast<size_t>(step_bytes);
  pw.w.resize(static_cast<size_t>(nvec) * steps * per_step);
  std::vector<int8_t> v(step_bytes);
  for (int b = 0; b < nvec; ++b) {
    for (int s = 0; s < steps; ++s) {
      for (int c = 0; c < vw; ++c)
        for (int t = 0; t < kg; ++t) v[c * kg + t] = W(b * vw + c, s * kg + t);
      uint8_t* dst = pw.w.ptr + (static_cast<size_t>(b) * steps + s) * per_step;
      if (pw.bits == 8) {
        std::memcpy(dst, v.data(), step_bytes);
      } else {
        for (int i = 0; i < half; ++i)
          dst[i] = static_cast<uint8_t>((v[i] & 0x0F) | ((v[i + half] & 0x0F) << 4));
      }
    }
  }
  if (pw.grouped) {
    pw.subs.resize(static_cast<size_t>(nvec) * pw.ngroups * vw * 4);
    int32_t* d = pw.subs.as<int32_t>();
    for (int b = 0; b < nvec; ++b)
      for (int g = 0; g < pw.ngroups; ++g)
        for (int c = 0; c < vw; ++c) {
          const int j = b * vw + c;
          d[(static_cast<size_t>(b) * pw.ngroups + g) * vw + c] = j < n ? subs[j * pw.ngroups + g] : 0;
        }
  }
}

}  // namespace

void pack_gemm_rows(PackedWeights& pw, const int8_t* w, const int32_t* subs) {
  const int n = pw.n, k = pw.k;
  pw.w.resize(static_cast<size_t>(n) * k);
  std::memcpy(pw.w.ptr, w, static_cast<size_t>(n) * k);
  if (pw.grouped) {
    pw.subs.resize(static_cast<size_t>(n) * pw.ngroups * 4);
    std::memcpy(pw.subs.ptr, subs, static_cast<size_t>(n) * pw.ngroups * 4);
  }
}

void pack_gemm_8x2(PackedWeights& pw, const int8_t* w, const int32_t* subs) { pack_gemm_blocked(pw, w, subs, 8, 2); }

void pack_gemm_16x4(PackedWeights& pw, const int8_t* w, const int32_t* subs) {
  pack_gemm_blocked(pw, w, subs, 16, 4);
}

void pack_gemm_16x4_s8(PackedWeights& pw, const int8_t* w, const int32_t* subs) {
  pack_gemm_blocked(pw, w, subs, 16, 4);
  const int n = pw.n, k = pw.k, nvec = (n + 15) / 16;
  AlignedBuf buf;
  buf.resize(pw.w.size + static_cast<size_t>(nvec) * 16 * 4);
  std::memcpy(buf.ptr, pw.w.ptr, pw.w.size);
  int32_t* corr = reinterpret_cast<int32_t*>(buf.ptr + pw.w.size);  // the weights are a multiple of 32 bytes
  for (int j = 0; j < n; ++j) {
    uint32_t sum = 0;  // modulo 2^32, as the kernels' int32 accumulators
    for (int i = 0; i < k; ++i) {
      const int32_t sub = pw.grouped ? subs[j * pw.ngroups + i / pw.group] : 1;
      sum += static_cast<uint32_t>(128 * w[static_cast<int64_t>(j) * k + i] * sub);
    }
    corr[j] = static_cast<int32_t>(sum);
  }
  pw.w = std::move(buf);
}

void pack_dw_taps(DwPacked& p, const int8_t* w, int c, int k, int /*in_zp*/, const Requant& /*q*/) {
  p.cpad = (c + 15) / 16 * 16;
  p.taps.assign(static_cast<size_t>(k) * k * p.cpad, 0);
  for (int ch = 0; ch < c; ++ch)
    for (int t = 0; t < k * k; ++t)
      p.taps[static_cast<size_t>(t) * p.cpad + ch] =
          static_cast<int32_t>(static_cast<uint16_t>(static_cast<int16_t>(w[ch * k * k + t])));
}

void pack_dw_pairs(DwPacked& p, const int8_t* w, int c, int k, int in_zp, const Requant& q) {
  p.cpad = (c + 15) / 16 * 16;
  const int kk = k * k, np = (kk + 1) / 2, nblk = p.cpad / 16;
  p.vw.resize(static_cast<size_t>(nblk) * np * 32 * 2);
  p.vinit.resize(static_cast<size_t>(p.cpad) * 4);
  int32_t* init = p.vinit.as<int32_t>();
  for (int ch = 0; ch < c; ++ch) {
    uint32_t sum = 0;  // modulo 2^32, as the kernel's int32 accumulators and the epilogue's bias addition
    for (int t = 0; t < kk; ++t) sum += static_cast<uint32_t>(w[static_cast<int64_t>(ch) * kk + t]);
    init[ch] = static_cast<int32_t>(static_cast<uint32_t>(q.bias[ch]) - static_cast<uint32_t>(in_zp) * sum);
  }
  int16_t* d = p.vw.as<int16_t>();
  for (int blk = 0; blk < nblk; ++blk)
    for (int pr = 0; pr < np; ++pr)
      for (int h = 0; h < 2; ++h)
        for (int e = 0; e < 16; ++e) {
          const int ch = 16 * blk + 8 * (e / 8) + 4 * h + (e % 8) / 2, t = 2 * pr + e % 2;
          d[((static_cast<size_t>(blk) * np + pr) * 2 + h) * 16 + e] =
              ch < c && t < kk ? static_cast<int16_t>(w[static_cast<int64_t>(ch) * kk + t]) : int16_t{0};
        }
}

void pack_dw_taps16(DwPacked& p, const int8_t* w, int c, int k, int /*in_zp*/, const Requant& /*q*/) {
  p.cpad = (c + 15) / 16 * 16;
  p.vw.resize(static_cast<size_t>(k) * k * p.cpad * 2);
  int16_t* t = p.vw.as<int16_t>();
  for (int ch = 0; ch < c; ++ch)
    for (int i = 0; i < k * k; ++i) t[static_cast<size_t>(i) * p.cpad + ch] = w[ch * k * k + i];
}

// Per 64-channel block, zmm j holds channel 16L + 4j + i in dword 4L + i (a tail block of <= 32 channels: 2 zmm,
// dword d of zmm j = channel 16 ((d % 8) / 4) + 4 (2j + d / 8) + d % 4); taps [blk][kx][ky / 4][zmm][dword][ky % 4]
// (see avx512.cpp); init = bias - in_zp * sum of the channel's taps (the zero-point correction, folded here).
void pack_dw_vnni(DwPacked& p, const int8_t* w, int c, int k, int in_zp, const Requant& q) {
  p.cpad = (c + 15) / 16 * 16;
  const int nblk = (c + 63) / 64, ng = (k + 3) / 4;
  p.vw.resize(static_cast<size_t>(nblk) * k * ng * 256);
  p.vinit.resize(static_cast<size_t>(nblk) * 64 * 4);
  p.vscale.resize(static_cast<size_t>(nblk) * 64 * 4);
  int8_t* dw = p.vw.as<int8_t>();
  int32_t* init = p.vinit.as<int32_t>();
  float* scale = p.vscale.as<float>();
  for (int blk = 0; blk < nblk; ++blk)
    for (int j = 0; j < 4; ++j)
      for (int d = 0; d < 16; ++d) {
        const bool narrow = c - blk * 64 <= 32;  // 32-channel block (channel tail): 2 zmm
        if (narrow && j >= 2) continue;
        // channel of dword d of zmm j
        const int ch = blk * 64 + (narrow ? 16 * ((d % 8) / 4) + 4 * (2 * j + d / 8) + d % 4
                                          : 16 * (d / 4) + 4 * j + d % 4);
        const int slot = blk * 64 + 16 * j + d;
        if (ch >= c) continue;
        int32_t sum = 0;
        for (int t = 0; t < k * k; ++t) sum += w[ch * k * k + t];
        init[slot] = q.bias[ch] - in_zp * sum;
        scale[slot] = q.scale[ch];
        for (int kx = 0; kx < k; ++kx)
          for (int g = 0; g < ng; ++g)
            for (int t = 0; t < 4; ++t) {
              const int ky = 4 * g + t;
              dw[((((static_cast<size_t>(blk) * k + kx) * ng + g) * 4 + j) * 16 + d) * 4 + t] =
                  ky < k ? w[(ch * k + ky) * k + kx] : 0;
            }
      }
}

int conv_seg4(int k, int cin) { return (k * cin + 3) / 4 * 4; }

void pack_conv_rows(const int8_t* w, int cout, int k, int cin, int8_t* dst) {
  const int seg4 = conv_seg4(k, cin);
  std::memset(dst, 0, static_cast<size_t>(cout) * k * seg4);
  for (int n = 0; n < cout; ++n)
    for (int ky = 0; ky < k; ++ky)
      std::memcpy(dst + (static_cast<size_t>(n) * k + ky) * seg4, w + (static_cast<size_t>(n) * k + ky) * k * cin,
                  static_cast<size_t>(k) * cin);
}

}  // namespace nask
