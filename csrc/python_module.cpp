// The Python extension module hvision_ext._C. Importing it loads this shared library, whose
// static initialisers register the `hvision` operators with PyTorch. It holds the kernels' limits,
// so that the Python side reads them rather than restating them, the instruction set the CPU
// kernels run (chosen here, at import: a bad HVISION_CPU_ISA fails the import), and the switch
// of the CPU tile-GEMM path.
#include <Python.h>
#include <c10/util/Exception.h>

#include <string>

#include "common/cpu_gemm.h"
#include "common/cpu_isa.h"
#include "hopfield_retrieval/hopfield_retrieval_step.h"
#include "selective_scan/selective_scan_step.h"
#include "sparse_attention/sparse_attention.h"

namespace {

using hvision::cpu::GemmPath;
using hvision::cpu::kGemmPathNames;

PyObject* name_object(std::string_view name) {
  return PyUnicode_FromStringAndSize(name.data(), static_cast<Py_ssize_t>(name.size()));
}

PyObject* cpu_gemm(PyObject*, PyObject*) {
  return name_object(kGemmPathNames[static_cast<int>(hvision::cpu::gemm_path())]);
}

PyObject* set_cpu_gemm(PyObject*, PyObject* name) {
  const char* requested = PyUnicode_AsUTF8(name);
  if (requested == nullptr) return nullptr;
  for (size_t i = 0; i < kGemmPathNames.size(); ++i) {
    if (kGemmPathNames[i] == requested) {
      hvision::cpu::set_gemm_path(static_cast<GemmPath>(i));
      Py_RETURN_NONE;
    }
  }
  const std::string message = std::string("set_cpu_gemm: expected path 'brgemm' or 'blas', got '") +
                              requested + "'";
  PyErr_SetString(PyExc_ValueError, message.c_str());
  return nullptr;
}

PyMethodDef methods[] = {
    {"cpu_gemm", cpu_gemm, METH_NOARGS, "The CPU tile-GEMM path in use: 'brgemm' or 'blas'."},
    {"set_cpu_gemm", set_cpu_gemm, METH_O, "Switches the CPU tile-GEMM path ('brgemm' or 'blas')."},
    {nullptr, nullptr, 0, nullptr}};

// Adds `object` (a new reference, or nullptr after a failure) to the module and drops it.
int add_object(PyObject* m, const char* name, PyObject* object) {
  if (object == nullptr) return -1;
  const int status = PyModule_AddObjectRef(m, name, object);
  Py_DECREF(object);
  return status;
}

int add_instruction_sets(PyObject* m) {
  hvision::cpu::Isa active;
  try {
    active = hvision::cpu::active_isa();
  } catch (const c10::Error& err) {
    PyErr_SetString(PyExc_RuntimeError, err.what_without_backtrace());
    return -1;
  }
  PyObject* names = PyTuple_New(static_cast<Py_ssize_t>(hvision::cpu::kIsaNames.size()));
  for (size_t i = 0; names != nullptr && i < hvision::cpu::kIsaNames.size(); ++i) {
    PyObject* name = name_object(hvision::cpu::kIsaNames[i]);
    if (name == nullptr) {
      Py_CLEAR(names);
      break;
    }
    PyTuple_SET_ITEM(names, static_cast<Py_ssize_t>(i), name);
  }
  if (add_object(m, "CPU_ISAS", names) < 0 ||
      add_object(m, "CPU_ISA_VARIABLE", name_object(hvision::cpu::kIsaVariable)) < 0 ||
      add_object(m, "CPU_ISA", name_object(hvision::cpu::isa_name(active))) < 0) {
    return -1;
  }
  return add_object(m, "CPU_ISA_NATIVE", name_object(isa_name(hvision::cpu::native_isa())));
}

}  // namespace

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  PyObject* m = PyModule_Create(&module);
  if (m == nullptr) return nullptr;
  const std::pair<const char*, int64_t> limits[] = {
      {"SCAN_CHUNK", hvision::kScanChunk},
      {"SCAN_MAX_STATE", hvision::kScanMaxState},
      {"ATTENTION_MAX_HEAD_DIM", hvision::sparse_attention::kMaxHeadDim},
      {"HOPFIELD_MAX_DIM", hvision::kHopfieldMaxDim},
      {"HOPFIELD_MAX_STEPS", hvision::kHopfieldMaxSteps},
  };
  for (const auto& [name, value] : limits) {
    if (PyModule_AddIntConstant(m, name, static_cast<long>(value)) < 0) {
      Py_DECREF(m);
      return nullptr;
    }
  }
  if (add_instruction_sets(m) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
