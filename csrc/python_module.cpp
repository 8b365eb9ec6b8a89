// The Python extension module hvision_ext._C. Importing it loads this shared library, whose
// static initialisers register the `hvision` operators with PyTorch. It holds no functions, only
// the kernels' limits, so that the Python side reads them rather than restating them.
#include <Python.h>

#include "common/step_math.h"
#include "sparse_attention/sparse_attention.h"

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* m = PyModule_Create(&module);
  if (m == nullptr) return nullptr;
  const std::pair<const char*, int64_t> limits[] = {
      {"SCAN_CHUNK", hvision::kScanChunk},
      {"SCAN_MAX_STATE", hvision::kScanMaxState},
      {"ATTENTION_MAX_HEAD_DIM", hvision::sparse_attention::kMaxHeadDim},
      {"HOPFIELD_MAX_DIM", hvision::kHopfieldMaxDim},
  };
  for (const auto& [name, value] : limits) {
    if (PyModule_AddIntConstant(m, name, static_cast<long>(value)) < 0) {
      Py_DECREF(m);
      return nullptr;
    }
  }
  return m;
}
