// Sparse attention: query i may attend key j iff (not causal or j <= i) and any of the local band
// |i - j| <= window, the strided term (i - j) % stride == 0, or the global term i < G or j < G.
// The kernels walk it from either side: "major" indices own the rows being computed (queries in
// the forward pass and for dq, keys for dk/dv) and "minor" indices are what they are paired with;
// `transposed` marks the key-major walk, where the causal condition reads minor >= major.
//
// A tile of major indices [a0, a1) reaches three disjoint sets of minor indices, so that a pair
// allowed by several terms is counted exactly once:
//   the global segment [0, G), the block segment [c0, c1) around the tile (the band and its
//   strided keys; the diagonal alone when only a stride is set), and each major index's own
//   strided extras b ≡ a (mod stride) outside both segments.
// The first `dense_majors` indices (the global rows, or every row of a dense pattern) instead
// reach every minor index the causal condition allows, as one segment.
//
// Compiled into both the CPU and the CUDA kernels, which run the online softmax of
// common/step_math.h over the tiles enumerated here.
#pragma once

#include <cstdint>

#include "common/step_math.h"

namespace hvision {

struct SparsePattern {
  int64_t length;
  int64_t window;      // < 0: no band
  int64_t stride;      // 0: no strided term
  int64_t num_global;  // may exceed length
  bool causal;
  bool transposed;

  HV_HOST_DEVICE bool has_window() const { return window >= 0; }
  HV_HOST_DEVICE bool has_stride() const { return stride > 0; }
  HV_HOST_DEVICE int64_t global_count() const { return num_global < length ? num_global : length; }
  // Every pair is allowed but for the causal condition: no term, or a stride of 1.
  HV_HOST_DEVICE bool is_dense() const {
    return stride == 1 || (!has_window() && !has_stride() && num_global == 0);
  }
  HV_HOST_DEVICE int64_t dense_majors() const { return is_dense() ? length : global_count(); }
};

// [begin, end) of minor indices; empty when end <= begin.
struct MinorRange {
  int64_t begin, end;
  HV_HOST_DEVICE int64_t size() const { return end > begin ? end - begin : 0; }
};

HV_HOST_DEVICE int64_t sparse_min(int64_t x, int64_t y) { return x < y ? x : y; }
HV_HOST_DEVICE int64_t sparse_max(int64_t x, int64_t y) { return x > y ? x : y; }

// Whether the causal condition lets major index a meet minor index b.
HV_HOST_DEVICE bool sparse_causal_ok(const SparsePattern& p, int64_t a, int64_t b) {
  return !p.causal || (p.transposed ? b >= a : b <= a);
}

// The minor indices the causal condition leaves to any major index of [a0, a1).
HV_HOST_DEVICE MinorRange sparse_causal_range(const SparsePattern& p, int64_t a0, int64_t a1) {
  if (!p.causal) return {0, p.length};
  return p.transposed ? MinorRange{a0, p.length} : MinorRange{0, a1};
}

HV_HOST_DEVICE MinorRange sparse_intersect(MinorRange x, MinorRange y) {
  return {sparse_max(x.begin, y.begin), sparse_min(x.end, y.end)};
}

// Whether major index a may meet minor index b (the definition at the top, with a, b swapped back
// to (query, key) when transposed: every term but the causal one is symmetric).
HV_HOST_DEVICE bool sparse_allows(const SparsePattern& p, int64_t a, int64_t b) {
  if (!sparse_causal_ok(p, a, b)) return false;
  if (p.is_dense() || a < p.num_global || b < p.num_global) return true;
  const int64_t distance = a > b ? a - b : b - a;
  if (p.has_window() && distance <= p.window) return true;
  return p.has_stride() && distance % p.stride == 0;
}

// A run of minor indices major index a certainly reaches (its causal range for a dense major
// index, else its causally clipped band, empty without a window): masking a tile checks
// sparse_allows only outside it.
HV_HOST_DEVICE MinorRange sparse_certain_range(const SparsePattern& p, int64_t a) {
  const MinorRange reach = sparse_causal_range(p, a, a + 1);
  if (a < p.dense_majors()) return reach;
  if (!p.has_window()) return {a, a};
  return sparse_intersect({a - p.window, a + p.window + 1}, reach);
}

// The segments of a major tile [a0, a1): for a dense tile (a1 <= dense_majors) the first is
// all its causal range and the second is empty.
HV_HOST_DEVICE MinorRange sparse_global_segment(const SparsePattern& p, int64_t a0, int64_t a1) {
  const MinorRange reach = sparse_causal_range(p, a0, a1);
  if (a1 <= p.dense_majors()) return reach;
  return sparse_intersect({0, p.global_count()}, reach);
}

HV_HOST_DEVICE MinorRange sparse_block_segment(const SparsePattern& p, int64_t a0, int64_t a1) {
  if (a1 <= p.dense_majors() || (!p.has_window() && !p.has_stride())) return {0, 0};
  const int64_t reach = p.has_window() ? p.window : 0;
  const MinorRange block{sparse_max(p.global_count(), a0 - reach), sparse_min(p.length, a1 + reach)};
  return sparse_intersect(block, sparse_causal_range(p, a0, a1));
}

// The strided extras of major index a within the minor range r: minor indices
// first, first + stride, ..., `count` of them (none without a stride).
struct StridedRun {
  int64_t first, count;
};

HV_HOST_DEVICE StridedRun sparse_strided_run(const SparsePattern& p, int64_t a, MinorRange r) {
  if (!p.has_stride()) return {0, 0};
  r = sparse_intersect(r, sparse_causal_range(p, a, a + 1));
  if (r.size() == 0) return {0, 0};
  // The smallest b >= r.begin with b ≡ a (mod stride).
  const int64_t offset = ((a - r.begin) % p.stride + p.stride) % p.stride;
  const int64_t first = r.begin + offset;
  return {first, first < r.end ? (r.end - 1 - first) / p.stride + 1 : 0};
}

// The two runs of strided extras of major index a in a non-dense tile whose block segment is
// `block`: below it (from the end of the global keys) and above it.
HV_HOST_DEVICE StridedRun sparse_strided_below(const SparsePattern& p, int64_t a, MinorRange block) {
  const int64_t end = block.size() > 0 ? block.begin : p.length;
  return sparse_strided_run(p, a, {p.global_count(), end});
}

HV_HOST_DEVICE StridedRun sparse_strided_above(const SparsePattern& p, int64_t a, MinorRange block) {
  if (block.size() == 0) return {0, 0};
  return sparse_strided_run(p, a, {block.end, p.length});
}

// The major tiles of one head: first the dense majors [0, dense_majors), then the rest, each cut
// into tiles of `tile` indices. Tile t covers tile_range(t).
struct SparseTiling {
  int64_t length = 0, dense_majors = 0, tile = 1, dense_tiles = 0, tiles = 0;

  SparseTiling() = default;

  HV_HOST_DEVICE SparseTiling(const SparsePattern& p, int64_t tile_size)
      : length(p.length),
        dense_majors(p.dense_majors()),
        tile(tile_size),
        dense_tiles((dense_majors + tile_size - 1) / tile_size),
        tiles(dense_tiles + (length - dense_majors + tile_size - 1) / tile_size) {}

  HV_HOST_DEVICE MinorRange tile_range(int64_t t) const {
    const bool dense = t < dense_tiles;
    const int64_t begin = dense ? t * tile : dense_majors + (t - dense_tiles) * tile;
    return {begin, sparse_min(begin + tile, dense ? dense_majors : length)};
  }
};

// The minor tiles (at most `width` indices each) of the segments of major tile [a0, a1), in order:
//   for (SparseMinorTiles t(p, a0, a1, width); t.next();) use(t.begin, t.size);
// A segment is cut into equal tiles: a band of 2·window + tile keys splits into even parts, not
// full tiles and a sliver. (A cursor rather than a callback, so that the CPU loop bodies stay in
// the functions compiled per instruction set.)
struct SparseMinorTiles {
  MinorRange segments[2];
  int64_t max_width;
  int segment = -1;
  int64_t begin = 0, size = 0, width = 0;

  HV_HOST_DEVICE SparseMinorTiles(const SparsePattern& p, int64_t a0, int64_t a1, int64_t width_limit)
      : segments{sparse_global_segment(p, a0, a1), sparse_block_segment(p, a0, a1)},
        max_width(width_limit) {}

  HV_HOST_DEVICE bool next() {
    begin += size;
    while (segment < 0 || begin >= segments[segment].end) {
      if (++segment == 2) return false;
      const int64_t extent = segments[segment].size();
      const int64_t parts = (extent + max_width - 1) / max_width;
      width = parts > 0 ? (extent + parts - 1) / parts : 0;
      begin = segments[segment].begin;
      size = 0;
    }
    size = sparse_min(width, segments[segment].end - begin);
    return true;
  }
};

// The strided extras of major index a of tile [a0, a1), in runs of at most `width`:
//   for (SparseStridedRuns r(p, a, a0, a1, width); r.next();) use(r.first, r.count);
// (minor indices r.first + u * p.stride for u < r.count).
struct SparseStridedRuns {
  StridedRun runs[2] = {{0, 0}, {0, 0}};
  int64_t stride, max_width;
  int run = 0;
  int64_t done = 0, first = 0, count = 0;

  HV_HOST_DEVICE SparseStridedRuns(const SparsePattern& p, int64_t a, int64_t a0, int64_t a1,
                                   int64_t width_limit)
      : stride(p.stride), max_width(width_limit) {
    if (a1 <= p.dense_majors() || !p.has_stride()) return;
    const MinorRange block = sparse_block_segment(p, a0, a1);
    runs[0] = sparse_strided_below(p, a, block);
    runs[1] = sparse_strided_above(p, a, block);
  }

  HV_HOST_DEVICE bool next() {
    done += count;
    while (done >= runs[run].count) {
      if (++run == 2) return false;
      done = 0;
      count = 0;
    }
    first = runs[run].first + done * stride;
    count = sparse_min(max_width, runs[run].count - done);
    return true;
  }
};

}  // namespace hvision
