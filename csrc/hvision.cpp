// Every operator schema of the `hvision` library. Kernels register per device next to their
// sources (TORCH_LIBRARY_IMPL); fake kernels and autograd are registered from Python.
#include <torch/library.h>

TORCH_LIBRARY(hvision, m) {
  // Mamba selective scan. `checkpoints` (the state entering every chunk of 64 steps) is what the
  // backward pass recomputes from; it is empty unless save_checkpoints.
  m.def(
      "selective_scan_fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, "
      "Tensor? z, Tensor? delta_bias, bool delta_softplus, Tensor? initial_state, bool reverse, "
      "bool save_checkpoints) -> (Tensor out, Tensor last_state, Tensor checkpoints)");
  m.def(
      "selective_scan_bwd(Tensor dout, Tensor? dlast_state, Tensor u, Tensor delta, Tensor A, "
      "Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, bool delta_softplus, "
      "Tensor? initial_state, bool reverse, Tensor checkpoints) -> (Tensor du, Tensor ddelta, "
      "Tensor dA, Tensor dB, Tensor dC, Tensor dD, Tensor dz, Tensor ddelta_bias, "
      "Tensor dinitial_state)");
  // Motion–saliency scores of video patches, (batch, T, P) in float32 (float64 for float64
  // frames). Not differentiable.
  m.def("motion_saliency(Tensor frames, int patch_size, float alpha) -> Tensor");
  // ToMe bipartite token merging; `assign` maps every input token to its output row.
  m.def(
      "merge_tokens_fwd(Tensor x, Tensor metric, int r, Tensor? importance, Tensor? size, "
      "int protect, float importance_weight) -> (Tensor merged, Tensor merged_size, "
      "Tensor assign)");
  m.def(
      "merge_tokens_bwd(Tensor dmerged, Tensor assign, Tensor? size, Tensor merged_size) -> "
      "Tensor");
  m.def("unmerge_tokens_fwd(Tensor y, Tensor assign) -> Tensor");
  m.def("unmerge_tokens_bwd(Tensor dout, Tensor assign, int rows) -> Tensor");
}
