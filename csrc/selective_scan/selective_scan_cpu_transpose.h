// The register transposes of the selective_scan lane kernels (selective_scan_cpu_lanes.cpp)
// between the rows of a block's channels and the (rows, kLanes) tiles the kernels read, which
// store one value per (row, lane) at [row * kLanes + lane]. Inlined into the kernels' per-ISA
// variants, so that the vectors are the instruction set's registers.
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

#include "common/cpu_dispatch.h"
#include "common/step_math.h"
#include "selective_scan/selective_scan_cpu.h"

namespace hvision::selective_scan::cpu_kernels {

template <typename V>
HV_INLINE V load_vector(const VectorValue<V>* values) {
  V v;
  __builtin_memcpy(&v, values, sizeof(v));
  return v;
}

template <typename V>
HV_INLINE void store_vector(VectorValue<V>* values, const V& v) {
  __builtin_memcpy(values, &v, sizeof(v));
}

// Tiles from and to the rows of a block's channels (the first `lanes`), kTransposeRows rows of the
// tile at a time: filling or reading a whole tile one lane at a time would touch one value per
// cache line and keep none of its lines in L1.
constexpr int64_t kTransposeRows = 64;

template <typename T, typename Row>
void rows_to_tile(const Row* rows, int64_t lanes, int64_t count, T* tile) {
  for (int64_t first = 0; first < count; first += kTransposeRows) {
    const int64_t last = std::min(count, first + kTransposeRows);
    for (int64_t l = 0; l < lanes; ++l) {
      for (int64_t i = first; i < last; ++i) tile[i * kLanes + l] = static_cast<T>(rows[l][i]);
    }
  }
}

template <typename T, typename Row>
void tile_to_rows(const T* tile, int64_t lanes, int64_t count, const Row* rows) {
  using S = std::remove_pointer_t<Row>;
  for (int64_t first = 0; first < count; first += kTransposeRows) {
    const int64_t last = std::min(count, first + kTransposeRows);
    for (int64_t l = 0; l < lanes; ++l) {
      for (int64_t i = first; i < last; ++i) rows[l][i] = static_cast<S>(tile[i * kLanes + l]);
    }
  }
}

// Swaps the off-diagonal kHalf x kHalf blocks of every 2 kHalf x 2 kHalf block of the square `v`
// (as many vectors as lanes), then those of half the size: from kHalf = width / 2 down, a
// transpose in width x log2(width) two-vector shuffles.
template <int64_t kHalf, typename V, size_t... kLane>
HV_INLINE void swap_off_diagonal(V* v, std::index_sequence<kLane...> order) {
  constexpr int64_t kWidth = kVectorWidth<V>;
#pragma GCC unroll 16
  for (int64_t r = 0; r < kWidth; ++r) {
    if (r & kHalf) continue;
    const V upper = v[r], lower = v[r + kHalf];
    v[r] = __builtin_shufflevector(upper, lower,
                                   (kLane & kHalf ? kWidth + kLane - kHalf : kLane)...);
    v[r + kHalf] = __builtin_shufflevector(upper, lower,
                                           (kLane & kHalf ? kWidth + kLane : kLane + kHalf)...);
  }
  if constexpr (kHalf > 1) swap_off_diagonal<kHalf / 2>(v, order);
}

template <typename V>
HV_INLINE void transpose_square(V* v) {
  swap_off_diagonal<kVectorWidth<V> / 2>(v, std::make_index_sequence<kVectorWidth<V>>{});
}

// Transposes every whole square of one vector's width of rows and lanes between a block's rows
// and a tile (into the tile with kToTile, else out of it) through registers, kTransposeRows rows
// at a time as rows_to_tile, and returns how many rows and lanes the squares cover.
template <bool kToTile, int64_t kBytes, typename Row, typename TileRow>
HV_INLINE std::pair<int64_t, int64_t> transpose_squares(const Row* rows, int64_t lanes,
                                                        int64_t count, TileRow tile) {
  using V = Vector<std::remove_cv_t<std::remove_pointer_t<Row>>, kBytes>;
  constexpr int64_t kWidth = kVectorWidth<V>;
  const int64_t whole_lanes = lanes / kWidth * kWidth, whole_count = count / kWidth * kWidth;
  for (int64_t first = 0; first < whole_count; first += kTransposeRows) {
    const int64_t last = std::min(whole_count, first + kTransposeRows);
    for (int64_t l0 = 0; l0 < whole_lanes; l0 += kWidth) {
      for (int64_t i0 = first; i0 < last; i0 += kWidth) {
        const auto row = [&](int64_t k) HV_INLINE_LAMBDA { return rows[l0 + k] + i0; };
        const auto tile_row = [&](int64_t k) HV_INLINE_LAMBDA {
          return tile + (i0 + k) * kLanes + l0;
        };
        V square[kWidth];
#pragma GCC unroll 16
        for (int64_t k = 0; k < kWidth; ++k) {
          square[k] = load_vector<V>(kToTile ? row(k) : tile_row(k));
        }
        transpose_square(square);
#pragma GCC unroll 16
        for (int64_t k = 0; k < kWidth; ++k) {
          if constexpr (kToTile) {
            store_vector(tile_row(k), square[k]);
          } else {
            store_vector(row(k), square[k]);
          }
        }
      }
    }
  }
  return {whole_count, whole_lanes};
}

// rows_to_tile and tile_to_rows in the dispatched kernels: for rows in the accumulation type,
// whole squares through registers and the rows and lanes past them value by value; for others
// (fp16/bf16 outputs) all value by value.
template <int64_t kBytes, typename T>
HV_INLINE void rows_to_tile_vectors(const T* const* rows, int64_t lanes, int64_t count, T* tile) {
  const auto [whole_count, whole_lanes] = transpose_squares<true, kBytes>(rows, lanes, count, tile);
  const T* rest[kLanes];
  for (int64_t l = 0; l < whole_lanes; ++l) rest[l] = rows[l] + whole_count;
  rows_to_tile(rest, whole_lanes, count - whole_count, tile + whole_count * kLanes);
  rows_to_tile(rows + whole_lanes, lanes - whole_lanes, count, tile + whole_lanes);
}

template <int64_t kBytes, typename T, typename S>
HV_INLINE void tile_to_rows_vectors(const T* tile, int64_t lanes, int64_t count, S* const* rows) {
  if constexpr (!std::is_same_v<T, S>) {
    tile_to_rows(tile, lanes, count, rows);
  } else {
    const auto [whole_count, whole_lanes] =
        transpose_squares<false, kBytes>(rows, lanes, count, tile);
    T* rest[kLanes];
    for (int64_t l = 0; l < whole_lanes; ++l) rest[l] = rows[l] + whole_count;
    tile_to_rows(tile + whole_count * kLanes, whole_lanes, count - whole_count, rest);
    tile_to_rows(tile + whole_lanes, lanes - whole_lanes, count, rows + whole_lanes);
  }
}

}  // namespace hvision::selective_scan::cpu_kernels
