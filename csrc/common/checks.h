// Argument checks shared by every operator. Each failure names the operator, the argument, what
// was expected and what was given, and raises a Python exception (never aborts the process).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <initializer_list>
#include <optional>
#include <sstream>
#include <string>

namespace hvision {

inline std::string shape_string(at::IntArrayRef sizes) {
  std::ostringstream out;
  out << '(';
  for (size_t i = 0; i < sizes.size(); ++i) out << (i ? ", " : "") << sizes[i];
  out << (sizes.size() == 1 ? ",)" : ")");
  return out.str();
}

inline void check_shape(const char* op, const char* name, const at::Tensor& t,
                        at::IntArrayRef expected, const char* meaning) {
  TORCH_CHECK_VALUE(t.sizes() == expected, op, ": expected ", name, " of shape ", meaning, " = ",
                    shape_string(expected), ", got ", shape_string(t.sizes()));
}

inline void check_dtype(const char* op, const char* name, const at::Tensor& t,
                        std::initializer_list<at::ScalarType> allowed) {
  for (auto dtype : allowed) {
    if (t.scalar_type() == dtype) return;
  }
  std::ostringstream expected;
  for (auto it = allowed.begin(); it != allowed.end(); ++it) {
    if (std::find(allowed.begin(), it, *it) != it) continue;  // listed twice
    expected << (it == allowed.begin() ? "" : " or ") << *it;
  }
  TORCH_CHECK_TYPE(false, op, ": expected ", name, " of dtype ", expected.str(), ", got ",
                   t.scalar_type());
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t,
                              const at::Tensor& reference, const char* reference_name) {
  TORCH_CHECK_VALUE(t.device() == reference.device(), op, ": expected ", name,
                    " on the same device as ", reference_name, " (", reference.device(),
                    "), got ", t.device());
}

}  // namespace hvision
