// Float32 batch norm + clamp activation for training, over channels-last tensors seen as [rows, C] matrices.
//
// Memory-bound loops written plainly so that the compiler vectorises them over channels with the baseline flags
// (SSE2 on x86-64): two passes forward (statistics; normalise + clamp), two backward (sums; input gradient).
// Rows are split into fixed chunks of kBnRows whose partial sums are added in chunk order, so the results do not
// depend on the thread count. Sums run in float inside a chunk and in double across chunks; the statistics are
// taken around the first row's values, so a large mean costs no precision.
#include <algorithm>
#include <vector>

#include "common.h"

namespace nask {
namespace {

constexpr int64_t kBnRows = 128;
constexpr int64_t kBnSerial = 1 << 16;  // below this many elements one thread is faster than starting more

int64_t chunks(int64_t rows) { return (rows + kBnRows - 1) / kBnRows; }

template <class F>
void for_chunks(int64_t rows, int64_t c, int threads, F f) {
  const int64_t n = chunks(rows);
  if (threads <= 1 || rows * c < kBnSerial || n == 1) {
    for (int64_t t = 0; t < n; ++t) f(t);
    return;
  }
  par_fresh(std::min<int64_t>(threads, n), static_cast<int>(n), [&](int b, int e) {
    for (int t = b; t < e; ++t) f(t);
  });
}

// Adds per-chunk float sums (chunks x C, two arrays) into double totals in chunk order.
void reduce(const std::vector<float>& p, const std::vector<float>& q, int64_t n, int64_t c, std::vector<double>& s,
            std::vector<double>& s2) {
  s.assign(c, 0.0);
  s2.assign(c, 0.0);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < c; ++j) {
      s[j] += p[t * c + j];
      s2[j] += q[t * c + j];
    }
}

}  // namespace

void bn_stats(const float* x, int64_t rows, int64_t c, float* mean, float* var, int threads) {
  const int64_t n = chunks(rows);
  std::vector<float> p(n * c), q(n * c);
  const float* ref = x;  // first row: the shift
  for_chunks(rows, c, threads, [&](int64_t t) {
    float* s = &p[t * c];
    float* s2 = &q[t * c];
    std::fill(s, s + c, 0.0f);
    std::fill(s2, s2 + c, 0.0f);
    const int64_t r1 = std::min(rows, (t + 1) * kBnRows);
    for (int64_t r = t * kBnRows; r < r1; ++r) {
      const float* xr = x + r * c;
      for (int64_t j = 0; j < c; ++j) {
        const float d = xr[j] - ref[j];
        s[j] += d;
        s2[j] += d * d;
      }
    }
  });
  std::vector<double> s, s2;
  reduce(p, q, n, c, s, s2);
  for (int64_t j = 0; j < c; ++j) {
    const double m = s[j] / static_cast<double>(rows);
    mean[j] = static_cast<float>(ref[j] + m);
    var[j] = static_cast<float>(std::max(0.0, s2[j] / static_cast<double>(rows) - m * m));
  }
}

void bn_affine_act(const float* x, int64_t rows, int64_t c, const float* scale, const float* shift, float lo,
                   float hi, float* out, int threads) {
  for_chunks(rows, c, threads, [&](int64_t t) {
    const int64_t r1 = std::min(rows, (t + 1) * kBnRows);
    for (int64_t r = t * kBnRows; r < r1; ++r) {
      const float* xr = x + r * c;
      float* o = out + r * c;
      for (int64_t j = 0; j < c; ++j) {
        float v = xr[j] * scale[j] + shift[j];
        v = v < lo ? lo : v;
        o[j] = v > hi ? hi : v;
      }
    }
  });
}

void bn_act_grad_sums(const float* x, const float* dy, int64_t rows, int64_t c, const float* scale,
                      const float* shift, float lo, float hi, const float* mean, float* sum_dz, float* sum_dz_xc,
                      int threads) {
  const int64_t n = chunks(rows);
  std::vector<float> p(n * c), q(n * c);
  for_chunks(rows, c, threads, [&](int64_t t) {
    float* s = &p[t * c];
    float* s2 = &q[t * c];
    std::fill(s, s + c, 0.0f);
    std::fill(s2, s2 + c, 0.0f);
    const int64_t r1 = std::min(rows, (t + 1) * kBnRows);
    for (int64_t r = t * kBnRows; r < r1; ++r) {
      const float* xr = x + r * c;
      const float* g = dy + r * c;
      for (int64_t j = 0; j < c; ++j) {
        const float z = xr[j] * scale[j] + shift[j];  // the forward's pre-activation, bit for bit
        const float dz = (z > lo && z < hi) ? g[j] : 0.0f;
        s[j] += dz;
        s2[j] += dz * (xr[j] - mean[j]);
      }
    }
  });
  std::vector<double> s, s2;
  reduce(p, q, n, c, s, s2);
  for (int64_t j = 0; j < c; ++j) {
    sum_dz[j] = static_cast<float>(s[j]);
    sum_dz_xc[j] = static_cast<float>(s2[j]);
  }
}

void bn_act_grad_input(const float* x, const float* dy, int64_t rows, int64_t c, const float* scale,
                       const float* shift, float lo, float hi, const float* mean, const float* b, const float* k,
                       float* dx, int threads) {
  for_chunks(rows, c, threads, [&](int64_t t) {
    const int64_t r1 = std::min(rows, (t + 1) * kBnRows);
    for (int64_t r = t * kBnRows; r < r1; ++r) {
      const float* xr = x + r * c;
      const float* g = dy + r * c;
      float* o = dx + r * c;
      for (int64_t j = 0; j < c; ++j) {
        const float z = xr[j] * scale[j] + shift[j];
        const float dz = (z > lo && z < hi) ? g[j] : 0.0f;
        o[j] = scale[j] * dz + b[j] + k[j] * (xr[j] - mean[j]);
      }
    }
  });
}

}  // namespace nask
