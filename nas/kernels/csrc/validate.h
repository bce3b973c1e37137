// Input validation of NumPy arrays for the Python bindings: every check raises a Python exception whose message
// starts with the argument's name, before any work starts (the checks of plain values are in ops.h).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <type_traits>
#include <vector>

#include "common.h"
#include "config.h"
#include "ops.h"

namespace py = pybind11;

namespace nask {

std::string shape_str(const py::array& a);

template <class T>
const char* dtype_name() {
  if (std::is_same<T, uint8_t>::value) return "uint8";
  if (std::is_same<T, int8_t>::value) return "int8";
  if (std::is_same<T, float>::value) return "float32";
  return "int32";
}

// Checks dtype (exact, no casting), C-contiguity, rank and the given dims (-1 = any).
template <class T>
py::array need(const py::object& obj, const char* name, std::vector<py::ssize_t> dims) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + ": expected a numpy array of " + dtype_name<T>());
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(py::dtype::of<T>()))
    throw py::type_error(std::string(name) + ": expected dtype " + dtype_name<T>() + ", got " +
                         std::string(py::str(a.dtype())));
  if (a.ndim() != static_cast<py::ssize_t>(dims.size()))
    throw py::value_error(std::string(name) + ": expected " + std::to_string(dims.size()) + "-d array, got shape " +
                          shape_str(a));
  for (size_t i = 0; i < dims.size(); ++i)
    if (dims[i] >= 0 && a.shape(i) != dims[i])
      throw py::value_error(std::string(name) + ": bad shape " + shape_str(a) + " (dim " + std::to_string(i) +
                            " must be " + std::to_string(dims[i]) + ")");
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": array must be C-contiguous (use np.ascontiguousarray)");
  return a;
}

void need_writeable(const py::array& a, const char* name);

}  // namespace nask
