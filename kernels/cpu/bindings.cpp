// The l0score._native module: one binding per C++ entry point.
#include <pybind11/pybind11.h>

#include <omp.h>

#include "pack.h"
#include "roofline.h"
#include "score.h"
#include "table_build.h"

namespace py = pybind11;

PYBIND11_MODULE(_native, m) {
  m.doc() = "l0score native CPU kernels";
  m.def("pack_dependent", &l0score::pack_dependent,
        "Validate ragged candidates (flat ids + lengths) and pack them with the suffix into "
        "[B, max_len + len(suffix)] rows; returns (ids, dep_len).",
        py::arg("flat"), py::arg("cand_len"), py::arg("suffix"), py::arg("vocab_rows"), py::arg("max_cand_len"));
  m.def("score_table", &l0score::score_table,
        "Fused token-table scorer (reference.score_rows semantics). Tables are [V, H*D] / [V, KV*D], "
        "float32 or bfloat16 bits (int16). Returns (head_max [B,Hs], head_pos [B,Hs,2], head_kl [B,Hs], "
        "band [B,n_offsets]).",
        py::arg("q_base"), py::arg("k_base"), py::arg("q_dorm"), py::arg("k_dorm"), py::arg("num_heads"),
        py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("ids"), py::arg("cand_len"), py::arg("dep_len"),
        py::arg("suffix"), py::arg("heads"), py::arg("prefix_keys"), py::arg("prefix_len"), py::arg("cand_start"),
        py::arg("cos"), py::arg("sin"), py::arg("rev_baseline"), py::arg("offsets"), py::arg("region_all"));
  m.def("score_dependent", &l0score::score_dependent,
        "score_table with every dependent row t < dep_len read from the table at ids[b, t] (no suffix shared "
        "between candidates: layer-L rows, whose q/k depend on the candidate). Same outputs.",
        py::arg("q_base"), py::arg("k_base"), py::arg("q_dorm"), py::arg("k_dorm"), py::arg("num_heads"),
        py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("ids"), py::arg("cand_len"), py::arg("dep_len"),
        py::arg("heads"), py::arg("prefix_keys"), py::arg("prefix_len"), py::arg("cand_start"), py::arg("cos"),
        py::arg("sin"), py::arg("rev_baseline"), py::arg("offsets"), py::arg("region_all"));
  m.def("extend_table", &l0score::extend_table,
        "Incremental extensions: for the context whose cached keys are prefix_keys (prefix_len of them, the "
        "candidate's tokens from cand_start), the scores of the one-token candidates [t] for t in pool, "
        "with the suffix after them, merged with the stats of earlier rows (earlier_*: the candidate prefix's "
        "own rows; empty arrays: none). Same outputs as score_table, one row per pool token.",
        py::arg("q_base"), py::arg("k_base"), py::arg("q_dorm"), py::arg("k_dorm"), py::arg("num_heads"),
        py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("pool"), py::arg("suffix"), py::arg("heads"),
        py::arg("prefix_keys"), py::arg("prefix_len"), py::arg("cand_start"), py::arg("cos"), py::arg("sin"),
        py::arg("rev_baseline"), py::arg("offsets"), py::arg("region_all"), py::arg("earlier_max"),
        py::arg("earlier_pos"), py::arg("earlier_kl"), py::arg("earlier_band"));
  m.def("pair_topk_table", &l0score::pair_topk_table,
        "Exact pair scan of query head `head` at offset `offset` over pool: the top `top` cells of "
        "|dS - shift| (offset 0: a token with itself only) as (signed values, query index, key index), "
        "best first, indices into pool. cos/sin: the D/2 RoPE angles of the offset.",
        py::arg("q_base"), py::arg("k_base"), py::arg("q_dorm"), py::arg("k_dorm"), py::arg("num_heads"),
        py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("pool"), py::arg("head"), py::arg("offset"),
        py::arg("top"), py::arg("shift"), py::arg("cos"), py::arg("sin"));
  m.def("pack_weights", &l0score::pack_weights, "Pack [N, K] projection weights into [ceil(N/32), K, 32] panels.",
        py::arg("w"));
  m.def("build_rows", &l0score::build_rows,
        "Token-table rows row0.. from float32 embedding rows: RMSNorm -> packed projection + bias, "
        "split into out_q (first q_cols columns) and out_k.",
        py::arg("x"), py::arg("norm"), py::arg("eps"), py::arg("packed"), py::arg("bias"), py::arg("n_cols"),
        py::arg("q_cols"), py::arg("out_q"), py::arg("out_k"), py::arg("row0"));
  m.def("advise_hugepages", &l0score::advise_hugepages,
        "madvise(MADV_HUGEPAGE) over the 2 MiB-aligned interior of a writeable buffer; call before first touch.",
        py::arg("data"));
  m.def("checksum", &l0score::checksum, "64-bit content hash of a C-contiguous buffer (parallel, deterministic).",
        py::arg("data"));
  m.def("fma_peak", &l0score::fma_peak, "Measured FMA ceiling in GFLOP/s (roofline.cpp).", py::arg("iterations"), py::arg("threads") = 0);
  m.def("num_threads", []() { return omp_get_max_threads(); }, "OpenMP threads the kernels use.");
  m.def("set_num_threads", [](int n) { omp_set_num_threads(n); }, "Set the OpenMP threads of the kernels.",
        py::arg("n"));
  m.attr("has_scorer") = true;
}
