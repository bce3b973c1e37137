// Input validation for the Python bindings (validate.h).
#include "validate.h"

namespace nask {

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

void need_writeable(const py::array& a, const char* name) {
  if (!a.writeable()) throw py::value_error(std::string(name) + ": array is read-only");
}

void check_range(int64_t v, int64_t lo, int64_t hi, const char* name) {
  if (v < lo || v > hi)
    throw py::value_error(std::string(name) + "=" + std::to_string(v) + " outside [" + std::to_string(lo) + ", " +
                          std::to_string(hi) + "]");
}

int check_threads(int threads) {
  check_range(threads, 1, 1024, "threads");
  return threads;
}

const Isa& parse_isa(const std::string& name) {
  if (const Isa* isa = find_isa(name)) return *isa;
  std::string known;
  for (const Isa& isa : all_isas()) known += (known.empty() ? "'" : ", '") + isa.name + "'";
  throw py::value_error("isa: expected one of " + known + ", got '" + name + "'");
}

const Isa& checked_isa(const std::string& name) {
  const Isa& isa = parse_isa(name);
  if (!isa.supported()) throw py::value_error("isa '" + name + "' is not supported by this CPU");
  return isa;
}

float checked_scale(int32_t multiplier, int32_t shift) {
  check_range(multiplier, 0, INT32_MAX, "multiplier");
  check_range(shift, -31, 30, "shift");
  return scale_of(multiplier, shift);
}

void fill_requant(Requant& q, int n, const py::object& mult_o, const py::object& shift_o, int out_zp, int act_min,
                  int act_max, const py::object& lut_o) {
  py::array mult = need<int32_t>(mult_o, "multiplier", {n});
  py::array shift = need<int32_t>(shift_o, "shift", {n});
  check_range(out_zp, 0, 255, "out_zp");
  check_range(act_min, 0, 255, "act_min");
  check_range(act_max, act_min, 255, "act_max");
  q.resize(n);
  const int32_t* m = static_cast<const int32_t*>(mult.data());
  const int32_t* s = static_cast<const int32_t*>(shift.data());
  for (int c = 0; c < n; ++c) {
    check_range(m[c], 0, INT32_MAX, "multiplier");
    check_range(s[c], -31, 30, "shift");
    q.scale[c] = scale_of(m[c], s[c]);
  }
  q.zp = out_zp;
  q.lo = act_min;
  q.hi = act_max;
  if (!lut_o.is_none()) {
    py::array lut = need<uint8_t>(lut_o, "lut", {256});
    const uint8_t* l = static_cast<const uint8_t*>(lut.data());
    q.lut32.assign(l, l + 256);
  }
}

}  // namespace nask
