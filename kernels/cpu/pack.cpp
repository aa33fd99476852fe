// Validate a ragged batch of candidate ids and pack it into the dependent-row layout the scorers
// read: row b = candidate b followed by the template suffix, padded with 0 to the longest row.
#include "pack.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <string>

namespace py = pybind11;

namespace l0score {

py::tuple pack_dependent(py::array_t<int64_t, py::array::c_style | py::array::forcecast> flat,
                         py::array_t<int64_t, py::array::c_style | py::array::forcecast> cand_len,
                         py::array_t<int64_t, py::array::c_style | py::array::forcecast> suffix,
                         int64_t vocab_rows, int64_t max_cand_len) {
  const int64_t n_cand = cand_len.size();
  const int64_t n_suffix = suffix.size();
  const int64_t* ids = flat.data();
  const int64_t* lens = cand_len.data();
  const int64_t* suf = suffix.data();

  // Errors name the candidate so a caller can find it in a batch of millions.
  int64_t total = 0, longest = 0;
  for (int64_t b = 0; b < n_cand; ++b) {
    const int64_t c = lens[b];
    if (c <= 0)
      throw py::value_error("candidate " + std::to_string(b) + ": empty candidate (length " +
                            std::to_string(c) + ")");
    if (c > max_cand_len)
      throw py::value_error("candidate " + std::to_string(b) + ": " + std::to_string(c) +
                            " tokens exceed the " + std::to_string(max_cand_len) +
                            " positions left by max_position_embeddings after the template");
    for (int64_t t = 0; t < c; ++t) {
      const int64_t v = ids[total + t];
      if (v < 0 || v >= vocab_rows)
        throw py::value_error("candidate " + std::to_string(b) + ", token " + std::to_string(t) +
                              ": id " + std::to_string(v) + " outside [0, " +
                              std::to_string(vocab_rows) + ")");
    }
    total += c;
    longest = std::max(longest, c);
  }
  if (total != flat.size())
    throw py::value_error("candidate lengths sum to " + std::to_string(total) + " but " +
                          std::to_string(flat.size()) + " ids were given");

  const int64_t width = longest + n_suffix;
  py::array_t<int64_t> packed({n_cand, width});
  py::array_t<int64_t> dep_len(n_cand);
  int64_t* out = packed.mutable_data();
  int64_t* dl = dep_len.mutable_data();
  {
    py::gil_scoped_release release;
    std::fill(out, out + n_cand * width, int64_t{0});
    int64_t start = 0;
    for (int64_t b = 0; b < n_cand; ++b) {
      int64_t* row = out + b * width;
      std::copy(ids + start, ids + start + lens[b], row);
      std::copy(suf, suf + n_suffix, row + lens[b]);
      dl[b] = lens[b] + n_suffix;
      start += lens[b];
    }
  }
  return py::make_tuple(packed, dep_len);
}

}  // namespace l0score
