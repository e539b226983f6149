// The schema of every precise_fast op, defined once; kernels register per dispatch key
// (CPU in fused_step_cpu.cpp, CUDA in fused_step_cuda.cu) and precise_fast/sde/ops.py adds
// the fake (meta) implementations and autograd. Importing precise_fast._C runs this.
#include <Python.h>
#include <torch/library.h>

namespace precise_fast {
const char* cpu_isa();  // fused_step_cpu.cpp
}

#include "fused_step_args.h"

namespace {
PyObject* cpu_isa(PyObject*, PyObject*) { return PyUnicode_FromString(precise_fast::cpu_isa()); }
PyObject* max_grid_rows(PyObject*, PyObject*) { return PyLong_FromLongLong(precise_fast::kMaxGridRows); }

PyMethodDef methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS, "The CPU kernels' instruction set: avx512, avx2 or baseline."},
    {"max_grid_rows", max_grid_rows, METH_NOARGS, "The rows a CUDA kernel launch takes at most (kMaxGridRows)."},
    {nullptr, nullptr, 0, nullptr},
};
}  // namespace

extern "C" {
// Importing the module loads the library, whose static initialisers register the ops with
// the dispatcher (the pattern of pytorch/extension-cpp); cpu_isa() and max_grid_rows() are
// its functions.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(precise_fast, m) {
  // Outputs not asked for (mean without return_mean, guard_bias without old_mean, ...)
  // are empty (0,) tensors. sigma / next_sigma / std: (B,) float; seeds / step_index:
  // (B,) int64 (step_index may be 0-d); family: precise_fast/kinds.py's FAMILY of the kind.
  m.def(
      "sample_step(Tensor x, Tensor v, Tensor sigma, Tensor next_sigma, Tensor std, Tensor? seeds, "
      "Tensor? step_index, Tensor? noise, int family, bool return_mean) -> (Tensor, Tensor, Tensor)");
  // sample_step writing into caller-owned buffers (e.g. one step of a step-major rollout
  // buffer): prev_sample in x's dtype, log_prob (B,) float32, mean float32 or None.
  m.def(
      "sample_step_out(Tensor x, Tensor v, Tensor sigma, Tensor next_sigma, Tensor std, Tensor? seeds, "
      "Tensor? step_index, Tensor? noise, int family, Tensor(a!) prev_sample, Tensor(b!) log_prob, "
      "Tensor(c!)? mean) -> ()");
  m.def(
      "score_step(Tensor x, Tensor v, Tensor prev_sample, Tensor sigma, Tensor next_sigma, Tensor std, "
      "Tensor? old_mean, int family, bool return_mean) -> (Tensor, Tensor, Tensor)");
  m.def(
      "score_step_backward(Tensor grad_log_prob, Tensor? grad_mean, Tensor? grad_guard_bias, Tensor x, Tensor v, "
      "Tensor prev_sample, Tensor sigma, Tensor next_sigma, Tensor std, Tensor? old_mean, int family, "
      "bool need_grad_x, bool need_grad_old_mean) -> (Tensor, Tensor, Tensor)");
  // The Philox normal stream alone (B, row_elems) float32: the debug path of replay tests.
  m.def("philox_normal(Tensor seeds, Tensor step_index, int row_elems) -> Tensor");
}
