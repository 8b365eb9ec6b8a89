// Every operator schema of the `hvision` library. Kernels register per device next to their
// sources (TORCH_LIBRARY_IMPL); fake kernels and autograd are registered from Python.
#include <torch/library.h>

TORCH_LIBRARY(hvision, m) {
  // Mamba selective scan. `checkpoints` (the state entering every chunk of kScanChunk steps) is
  // what the backward pass recomputes from.
  m.def(
      "selective_scan_fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, "
      "Tensor? z, Tensor? delta_bias, bool delta_softplus, Tensor? initial_state, bool reverse) "
      "-> (Tensor out, Tensor last_state, Tensor checkpoints)");
  m.def(
      "selective_scan_bwd(Tensor dout, Tensor? dlast_state, Tensor u, Tensor delta, Tensor A, "
      "Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, bool delta_softplus, "
      "Tensor? initial_state, bool reverse, Tensor checkpoints) -> (Tensor du, Tensor ddelta, "
      "Tensor dA, Tensor dB, Tensor dC, Tensor dD, Tensor dz, Tensor ddelta_bias, "
      "Tensor dinitial_state)");

  // Sparse attention: query i attends key j iff (not causal or j <= i) and any of |i - j| <=
  // window, (i - j) % stride == 0, i < num_global or j < num_global (dense with no term). `lse`
  // (batch, heads, L), the log-sum-exp of each query's scores, is what the backward pass
  // recomputes the probabilities from.
  m.def(
      "sparse_attention_fwd(Tensor q, Tensor k, Tensor v, int? window, int? stride, "
      "int num_global, bool causal, float? scale) -> (Tensor out, Tensor lse)");
  m.def(
      "sparse_attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
      "int? window, int? stride, int num_global, bool causal, float? scale) -> (Tensor dq, "
      "Tensor dk, Tensor dv)");

  // Modern Hopfield retrieval, all n_steps update steps in one pass. `states` (n_steps - 1,
  // batch, heads, Q, d) holds ξ_1 … ξ_{n_steps-1} and `lse` (n_steps, batch, heads, Q) each step's
  // log-sum-exp, both in the accumulation dtype: what the backward pass recomputes the
  // probabilities from. `probabilities` (n_steps, batch, heads, Q, M) keeps them instead where
  // the device's kernels keep them (the CPU's) and they take at most `max_saved_bytes`; else it
  // is empty, shape (0,).
  m.def(
      "hopfield_retrieval_fwd(Tensor query, Tensor stored, Tensor? values, float beta, "
      "int n_steps, int max_saved_bytes) -> (Tensor out, Tensor states, Tensor lse, "
      "Tensor probabilities)");
  m.def(
      "hopfield_retrieval_bwd(Tensor dout, Tensor query, Tensor stored, Tensor? values, "
      "Tensor out, Tensor states, Tensor lse, Tensor probabilities, float beta, int n_steps) -> "
      "(Tensor dquery, Tensor dstored, Tensor dvalues)");

  // Motion–saliency scores of video patches, (batch, T, P) in float32 (float64 for float64
  // frames). Not differentiable.
  m.def("motion_saliency(Tensor frames, SymInt patch_size, float alpha) -> Tensor");
  // ToMe bipartite token merging; `assign` maps every input token to its output row.
  m.def(
      "merge_tokens_fwd(Tensor x, Tensor metric, SymInt r, Tensor? importance, Tensor? size, "
      "int protect, float importance_weight) -> (Tensor merged, Tensor merged_size, "
      "Tensor assign)");
  m.def(
      "merge_tokens_bwd(Tensor dmerged, Tensor assign, Tensor? size, Tensor merged_size) -> "
      "Tensor");
  m.def("unmerge_tokens_fwd(Tensor y, Tensor assign) -> Tensor");
  m.def("unmerge_tokens_bwd(Tensor dout, Tensor assign, SymInt rows) -> Tensor");
}
