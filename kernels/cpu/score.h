#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>

namespace l0score {

using I64Array = pybind11::array_t<int64_t, pybind11::array::c_style | pybind11::array::forcecast>;
using F32Array = pybind11::array_t<float, pybind11::array::c_style | pybind11::array::forcecast>;

// Fused token-table scorer (see score.cpp): returns (head_max, head_pos, head_kl, band).
pybind11::tuple score_table(pybind11::array q_base, pybind11::array k_base, pybind11::array q_dorm,
                            pybind11::array k_dorm, int64_t num_heads, int64_t num_kv_heads,
                            int64_t head_dim, I64Array ids, I64Array cand_len, I64Array dep_len,
                            I64Array suffix, I64Array heads, F32Array prefix_keys, int64_t prefix_len,
                            int64_t cand_start, F32Array cos, F32Array sin, F32Array rev_baseline,
                            I64Array offsets, bool region_all);

// Every dependent row from the table, none shared (see dependent.cpp): the same four outputs.
pybind11::tuple score_dependent(pybind11::array q_base, pybind11::array k_base, pybind11::array q_dorm,
                                pybind11::array k_dorm, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                                I64Array ids, I64Array cand_len, I64Array dep_len, I64Array heads,
                                F32Array prefix_keys, int64_t prefix_len, int64_t cand_start, F32Array cos,
                                F32Array sin, F32Array rev_baseline, I64Array offsets, bool region_all);

// Incremental extensions (see extend.cpp): the same four outputs for prefix + [t], t over pool.
pybind11::tuple extend_table(pybind11::array q_base, pybind11::array k_base, pybind11::array q_dorm,
                             pybind11::array k_dorm, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                             I64Array pool, I64Array suffix, I64Array heads, F32Array prefix_keys, int64_t prefix_len,
                             int64_t cand_start, F32Array cos, F32Array sin, F32Array rev_baseline, I64Array offsets,
                             bool region_all, F32Array earlier_max, I64Array earlier_pos, F32Array earlier_kl,
                             F32Array earlier_band);

// Exact pair scan of one (head, offset) over a pool (see pair_scan.cpp): (values, q_idx, k_idx),
// the top `top` cells by |dS - shift|, best first; indices into pool.
pybind11::tuple pair_topk_table(pybind11::array q_base, pybind11::array k_base, pybind11::array q_dorm,
                                pybind11::array k_dorm, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                                I64Array pool, int64_t head, int64_t offset, int64_t top, double shift, F32Array cos,
                                F32Array sin);

}  // namespace l0score
