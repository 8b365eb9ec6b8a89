// The CPU kernels compute in the accumulation type T (float, or double for float64 inputs) and
// read fp16/bf16 inputs one row at a time into T.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace hvision {

// `count` values as type T: the source itself when it already is, else a widened copy in
// `buffer`.
template <typename T, typename scalar_t>
const T* widen(const scalar_t* source, int64_t count, std::vector<T>& buffer) {
  if constexpr (std::is_same_v<T, scalar_t>) {
    return source;
  } else {
    buffer.resize(count);
    std::copy_n(source, count, buffer.begin());
    return buffer.data();
  }
}

}  // namespace hvision
