// The Python extension module hvision_ext._C. It holds no functions: importing it loads this
// shared library, whose static initialisers register the `hvision` operators with PyTorch.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
