// merge_tokens / unmerge_tokens: argument validation and the bookkeeping shared by every device.
// The choice of the r merged tokens, the output rows and the row sources are small (batch, N)
// tensor operations (a stable sort, a cumulative sum, scatters); the work on the tokens and the
// metric is in the per-device kernels.
#include "merge_tokens/merge_tokens.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "common/checks.h"

namespace hvision::merge_tokens {
namespace {

constexpr const char* kMerge = "merge_tokens";
constexpr const char* kUnmerge = "unmerge_tokens";

void check_tokens(const char* op, const char* name, const at::Tensor& t, const char* meaning) {
  TORCH_CHECK_VALUE(t.dim() == 3, op, ": expected ", name, " of shape ", meaning, ", got ",
                    shape_string(t.sizes()));
  check_dtype(op, name, t, {at::kFloat, at::kHalf, at::kBFloat16, at::kDouble});
}

// A per-token (batch, N) tensor in x's dtype or its accumulation type, returned in the latter.
std::optional<at::Tensor> check_per_token(const char* op, const char* name,
                                          const std::optional<at::Tensor>& t,
                                          const at::Tensor& x, int64_t batch, int64_t tokens) {
  if (!t) return std::nullopt;
  const at::ScalarType acc = at::toOpMathType(x.scalar_type());
  check_same_device(op, name, *t, x, "x");
  check_dtype(op, name, *t, {x.scalar_type(), acc});
  check_shape(op, name, *t, {batch, tokens}, "(batch, N)");
  return t->to(acc).contiguous();
}

// assign: (batch, N) int64 with every value a row of the output, in [0, rows). Reading the range
// waits for the device on CUDA; it is what keeps every kernel's reads in bounds. `values`
// false skips it for an assign that merge_tokens_fwd produced itself (its backward), where a
// bad one, from a direct call, fails in at::gather's own bounds check before any kernel reads.
at::Tensor check_assign(const char* op, const at::Tensor& assign, const at::Tensor& reference,
                        const char* reference_name, int64_t batch, int64_t tokens, int64_t rows,
                        bool values = true) {
  check_same_device(op, "assign", assign, reference, reference_name);
  check_dtype(op, "assign", assign, {at::kLong});
  check_shape(op, "assign", assign, {batch, tokens}, "(batch, N)");
  if (values && assign.numel() > 0) {
    const auto [low, high] = at::aminmax(assign);
    const int64_t lowest = low.item<int64_t>(), highest = high.item<int64_t>();
    TORCH_CHECK_VALUE(lowest >= 0 && highest < rows, op,
                      ": expected assign values in [0, rows) = [0, ", rows, "), got values in [",
                      lowest, ", ", highest, "]");
  }
  return assign.contiguous();
}

// Token masses must be positive: a zero sum would divide by zero, a negative one flip signs.
// Reading them waits for the device on CUDA.
void check_positive_size(const std::optional<at::Tensor>& size) {
  if (!size || size->numel() == 0) return;
  const double smallest = size->min().item<double>();
  TORCH_CHECK_VALUE(smallest > 0, kMerge, ": expected size > 0 everywhere, got a smallest value of ",
                    smallest);
}

// The tokens of each output row, in token order: a stable sort of assign keeps equal rows in
// token order.
RowSources row_sources(const at::Tensor& assign, int64_t rows) {
  auto [sorted, sources] = at::sort(assign, /*stable=*/true, /*dim=*/-1, /*descending=*/false);
  return {sorted.contiguous(), sources.contiguous(), rows};
}

// assign of a merge: the r A tokens with the highest scores (ties to the lower index: a stable
// descending sort) go into their best B; every other token keeps its own row, in token order.
at::Tensor merge_assign(const Kernels& kernels, const at::Tensor& metric, int64_t r,
                        const std::optional<at::Tensor>& importance, int64_t protect,
                        double importance_weight) {
  const int64_t batch = metric.size(0), tokens = metric.size(1);
  const auto index_options = metric.options().dtype(at::kLong);
  const at::Tensor identity = at::arange(tokens, index_options).expand({batch, tokens});
  if (r == 0) return identity.contiguous();
  const at::ScalarType acc = at::toOpMathType(metric.scalar_type());
  const auto [score, best] = kernels.best_matches(
      metric, importance ? std::optional<at::Tensor>(importance->to(acc)) : std::nullopt, protect,
      importance_weight);
  const at::Tensor order =
      std::get<1>(at::sort(score, /*stable=*/true, /*dim=*/-1, /*descending=*/true));
  const at::Tensor chosen = order.narrow(-1, 0, r);
  const at::Tensor merged_tokens = chosen * 2 + protect;
  const at::Tensor destinations = best.gather(-1, chosen) * 2 + (protect + 1);
  const at::Tensor kept = at::ones({batch, tokens}, index_options).scatter_(-1, merged_tokens, 0);
  const at::Tensor output_row = kept.cumsum(-1) - 1;
  return output_row.scatter(-1, merged_tokens, output_row.gather(-1, destinations));
}

}  // namespace

MergeResult merge_forward(const Kernels& kernels, const at::Tensor& x, const at::Tensor& metric,
                          int64_t r, const std::optional<at::Tensor>& importance,
                          const std::optional<at::Tensor>& size, int64_t protect,
                          double importance_weight) {
  check_tokens(kMerge, "x", x, "(batch, N, C)");
  check_tokens(kMerge, "metric", metric, "(batch, N, Cm)");
  check_same_device(kMerge, "metric", metric, x, "x");
  const int64_t batch = x.size(0), tokens = x.size(1);
  TORCH_CHECK_VALUE(metric.size(0) == batch && metric.size(1) == tokens, kMerge,
                    ": expected metric of shape (batch, N, Cm) with (batch, N) = (", batch, ", ",
                    tokens, ") as x, got ", shape_string(metric.sizes()));
  TORCH_CHECK_VALUE(protect >= 0 && protect <= tokens, kMerge, ": expected protect in [0, N] = [0, ",
                    tokens, "], got ", protect);
  const int64_t max_r = (tokens - protect) / 2;
  TORCH_CHECK_VALUE(r >= 0 && r <= max_r, kMerge,
                    ": expected r in [0, (N - protect) // 2] = [0, ", max_r, "], got ", r);
  const auto importance_acc = check_per_token(kMerge, "importance", importance, x, batch, tokens);
  const auto size_acc = check_per_token(kMerge, "size", size, x, batch, tokens);
  check_positive_size(size_acc);

  const at::Tensor assign =
      merge_assign(kernels, metric.contiguous(), r, importance_acc, protect, importance_weight);
  auto [merged, merged_size] =
      kernels.segment_sum(x.contiguous(), size_acc, row_sources(assign, tokens - r), true);
  return {merged, merged_size, assign};
}

at::Tensor merge_backward(const Kernels& kernels, const at::Tensor& dmerged,
                          const at::Tensor& assign, const std::optional<at::Tensor>& size,
                          const at::Tensor& merged_size) {
  check_tokens(kMerge, "dmerged", dmerged, "(batch, N - r, C)");
  const int64_t batch = dmerged.size(0), rows = dmerged.size(1);
  TORCH_CHECK_VALUE(assign.dim() == 2, kMerge, ": expected assign of shape (batch, N), got ",
                    shape_string(assign.sizes()));
  const int64_t tokens = assign.size(1);
  // The values of assign are checked on the CPU only, where that costs no wait.
  const at::Tensor checked = check_assign(kMerge, assign, dmerged, "dmerged", batch, tokens, rows,
                                          /*values=*/!dmerged.is_cuda());
  const auto size_acc = check_per_token(kMerge, "size", size, dmerged, batch, tokens);
  check_same_device(kMerge, "merged_size", merged_size, dmerged, "dmerged");
  check_dtype(kMerge, "merged_size", merged_size, {at::toOpMathType(dmerged.scalar_type())});
  check_shape(kMerge, "merged_size", merged_size, {batch, rows}, "(batch, N - r)");
  // d merged[j] / d x[i] = size[i] / merged_size[j] for the row j = assign[i] that x[i] joined.
  const at::Tensor total = merged_size.gather(-1, checked);
  const at::Tensor share = size_acc ? *size_acc / total : total.reciprocal();
  return kernels.gather_rows(dmerged.contiguous(), checked, share);
}

at::Tensor unmerge_forward(const Kernels& kernels, const at::Tensor& y, const at::Tensor& assign) {
  check_tokens(kUnmerge, "y", y, "(batch, N - r, C)");
  TORCH_CHECK_VALUE(assign.dim() == 2, kUnmerge, ": expected assign of shape (batch, N), got ",
                    shape_string(assign.sizes()));
  const at::Tensor checked =
      check_assign(kUnmerge, assign, y, "y", y.size(0), assign.size(1), y.size(1));
  return kernels.gather_rows(y.contiguous(), checked, std::nullopt);
}

at::Tensor unmerge_backward(const Kernels& kernels, const at::Tensor& dout,
                            const at::Tensor& assign, int64_t rows) {
  check_tokens(kUnmerge, "dout", dout, "(batch, N, C)");
  TORCH_CHECK_VALUE(rows >= 0, kUnmerge, ": expected rows >= 0, got ", rows);
  const at::Tensor checked =
      check_assign(kUnmerge, assign, dout, "dout", dout.size(0), dout.size(1), rows);
  return std::get<0>(
      kernels.segment_sum(dout.contiguous(), std::nullopt, row_sources(checked, rows), false));
}

}  // namespace hvision::merge_tokens
