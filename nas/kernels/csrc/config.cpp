// The ISA list and one kernel table per ISA.
//
// The x86 rows exist on x86-64 builds, the ARM rows (neon: ARMv8.0; neondot: ARMv8.2 sdot) on AArch64 builds.
//
// Adding an ISA:
//   1. one kernel source file, <isa>.cpp, defining namespace nask::<isa> { gemm, depthwise, pool, channel_scale,
//      dw_weight_grad } with the signatures of NASK_DECLARE_ISA (common.h; add a NASK_DECLARE_ISA(<isa>) line) and
//      compiled for its target by a `#pragma GCC target` region, like avx2.cpp; add it to SOURCES in setup.py;
//   2. one row in all_isas() below: its name (Python sees it in nas.kernels.isa.ISAS), a CPU check and a table
//      function like avx2_table(). Its packers come from pack.h: reuse a layout (pack_gemm_8x2, pack_dw_taps, ...)
//      or add the packer the kernels need there (portable code). Optional entries stay nullptr.
// The bit-exactness tests (tests/kernels) then run every op on the new ISA against the NumPy reference.
#include "config.h"

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#elif defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

namespace nask {
namespace {

bool always() { return true; }

#if defined(__x86_64__) || defined(_M_X64)
#if defined(__GNUC__)
bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
}

bool cpu_has_avx512vnni() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vnni");
}
#else
bool cpu_has_avx2() { return false; }
bool cpu_has_avx512vnni() { return false; }
#endif
#endif

#if defined(__aarch64__)
// Advanced SIMD (NEON) is part of every ARMv8-A AArch64 CPU.
bool cpu_has_dotprod() {
#if defined(__linux__)
  constexpr unsigned long kHwcapAsimdDp = 1ul << 20;  // HWCAP_ASIMDDP (asm/hwcap.h): sdot/udot
  return (getauxval(AT_HWCAP) & kHwcapAsimdDp) != 0;
#elif defined(__APPLE__)
  int v = 0;
  size_t n = sizeof(v);
  return sysctlbyname("hw.optional.arm.FEAT_DotProd", &v, &n, nullptr, 0) == 0 && v != 0;
#else
  return false;
#endif
}
#endif

KernelTable reference_table() {
  KernelTable t;
  t.gemm = ref::gemm;
  t.depthwise = ref::depthwise;
  t.pool = ref::pool;
  t.channel_scale = ref::channel_scale;
  t.pack_gemm = pack_gemm_rows;
  t.pack_depthwise = pack_dw_taps;
  t.dw_weight_grad = ref::dw_weight_grad;
  return t;
}

#if defined(__x86_64__) || defined(_M_X64)
KernelTable avx2_table() {
  KernelTable t;
  t.gemm = avx2::gemm;
  t.depthwise = avx2::depthwise;
  t.pool = avx2::pool;
  t.channel_scale = avx2::channel_scale;
  t.pack_gemm = pack_gemm_8x2;
  t.pack_depthwise = pack_dw_pairs;
  t.dw_weight_grad = avx2::dw_weight_grad;
  t.fake_quant = avx2::fake_quant;
  return t;
}

KernelTable avx512vnni_table() {
  KernelTable t;
  t.gemm = avx512::gemm;
  t.depthwise = avx512::depthwise;
  t.pool = avx512::pool;
  t.channel_scale = avx512::channel_scale;
  t.pack_gemm = pack_gemm_16x4;
  t.pack_depthwise = pack_dw_vnni;
  t.direct_conv = true;
  t.dw_weight_grad = avx512::dw_weight_grad;
  t.fake_quant = avx2::fake_quant;  // memory-bound: the AVX2 form is as fast
  t.quantize_rgb = avx512::quantize_rgb;
  return t;
}
#endif

#if defined(__aarch64__)
KernelTable neon_table() {
  KernelTable t;
  t.gemm = neon::gemm;
  t.depthwise = neon::depthwise;
  t.pool = neon::pool;
  t.channel_scale = neon::channel_scale;
  t.pack_gemm = pack_gemm_16x4_s8;
  t.pack_depthwise = pack_dw_taps16;
  t.dw_weight_grad = neon::dw_weight_grad;
  return t;
}

KernelTable neondot_table() {  // only the GEMM has a dot-product form
  KernelTable t = neon_table();
  t.gemm = neondot::gemm;
  return t;
}
#endif

}  // namespace

const std::vector<Isa>& all_isas() {
  static const std::vector<Isa> isas = {
      {"reference", always, reference_table()},
#if defined(__x86_64__) || defined(_M_X64)
      {"avx2", cpu_has_avx2, avx2_table()},
      {"avx512vnni", cpu_has_avx512vnni, avx512vnni_table()},
#endif
#if defined(__aarch64__)
      {"neon", always, neon_table()},
      {"neondot", cpu_has_dotprod, neondot_table()},
#endif
  };
  return isas;
}

const Isa* find_isa(const std::string& name) {
  for (const Isa& isa : all_isas())
    if (isa.name == name) return &isa;
  return nullptr;
}

}  // namespace nask
