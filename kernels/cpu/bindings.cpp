// The l0score._native module: one binding per C++ entry point.
#include <pybind11/pybind11.h>

#include "pack.h"

PYBIND11_MODULE(_native, m) {
  m.doc() = "l0score native CPU kernels";
  m.def("pack_dependent", &l0score::pack_dependent,
        "Validate ragged candidates (flat ids + lengths) and pack them with the suffix into "
        "[B, max_len + len(suffix)] rows; returns (ids, dep_len).",
        pybind11::arg("flat"), pybind11::arg("cand_len"), pybind11::arg("suffix"),
        pybind11::arg("vocab_rows"), pybind11::arg("max_cand_len"));
}
