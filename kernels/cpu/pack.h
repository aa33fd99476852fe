#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>

namespace l0score {
pybind11::tuple pack_dependent(
    pybind11::array_t<int64_t, pybind11::array::c_style | pybind11::array::forcecast> flat,
    pybind11::array_t<int64_t, pybind11::array::c_style | pybind11::array::forcecast> cand_len,
    pybind11::array_t<int64_t, pybind11::array::c_style | pybind11::array::forcecast> suffix,
    int64_t vocab_rows, int64_t max_cand_len);
}
