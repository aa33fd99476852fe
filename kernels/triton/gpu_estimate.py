"""Paper estimate of the Triton kernels on an H100 SXM (nothing here has been measured on a GPU).

    python -m l0score.kernels.gpu_estimate [--prefix 30 --cand 8 --suffix 5 --offsets 0]

Counts, per candidate, the work the kernels as written do (padded tiles included) and the bytes
they move, and divides by the stated hardware rates. Every assumption is an argument or a constant
below; README.md ("GPU performance (estimated)") is this script's output with the reasoning around it.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

# H100 SXM5 (public datasheet figures; dense, i.e. without 2:4 sparsity)
HBM_BYTES_S = 3.35e12
FP32_FLOPS = 67e12  # non-tensor FP32 (an FMA counts as 2 FLOPs)
TF32_FLOPS = 495e12
BF16_FLOPS = 990e12
# Not on the datasheet: assumptions, stated as such in README.md ("GPU performance (estimated)")
L2_BYTES_S = 5.5e12  # L2 -> SM read bandwidth (microbenchmarks report roughly 5-7 TB/s)
SMS, CLOCK = 132, 1.83e9
MUFU_S = 16 * SMS * CLOCK  # exp2/log2 per second (16 per SM per clock)
ALU_S = FP32_FLOPS / 2  # non-FMA FP32/INT instructions per second (one per lane per clock)
ALU_PER_CELL = 30  # masks, dS, |.|, baseline, max/argmax, KL updates per computed cell
ALU_PER_CELL_OFFSET = 3  # band compare/select/max per cell and band offset

QWEN2_7B = dict(vocab=152064, hidden=3584, heads=28, kv_heads=4, head_dim=128)


@dataclass
class Shape:
    prefix: int = 30
    cand: int = 8
    suffix: int = 5
    heads_scored: int = 28
    offsets: int = 0
    block_k: int = 32  # score kernel key tile (first H100 config)
    direct_block_k: int = 16


def _ceil(a, b):
    return -(-a // b) * b


def row_block(width: int) -> int:
    return min(64, max(16, 1 << max(0, width - 1).bit_length()))


def estimate(shape: Shape = Shape(), table_bytes_per_value: int = 2, m=QWEN2_7B) -> dict:
    H, KV, D, hidden, V = m["heads"], m["kv_heads"], m["head_dim"], m["hidden"], m["vocab"]
    p, L, hs = shape.prefix, shape.cand + shape.suffix, shape.heads_scored
    bl = row_block(L)
    out = {"rows": L, "block_l": bl}
    out["useful_cells_per_head"] = L * p + L * (L + 1) // 2
    # one program per (candidate, head); per row tile: prefix key tiles + dependent key tiles up to the tile
    computed = 0
    for t0 in range(0, L, bl):
        keys = _ceil(p, shape.block_k) + _ceil(min(t0 + bl, L), shape.block_k)
        computed += bl * keys
    out["computed_cells_per_head"] = computed
    n_cells = hs * computed
    out["dot_flops"] = n_cells * 2 * 2 * D  # two models, D multiply-adds per logit
    out["useful_dot_flops"] = hs * out["useful_cells_per_head"] * 2 * 2 * D
    rot_rows = hs * sum(bl for _ in range(0, L, bl)) + hs * sum(_ceil(min(t0 + bl, L), shape.block_k)
                                                                 for t0 in range(0, L, bl))
    out["rope_flops"] = rot_rows * D * 3 * 2
    out["alu_ops"] = n_cells * (ALU_PER_CELL + ALU_PER_CELL_OFFSET * shape.offsets)
    out["exp2"] = n_cells * 2
    tb = table_bytes_per_value
    row_bytes = 2 * (H + KV) * D * tb  # one token, both models, every head
    out["table_bytes"] = V * row_bytes
    # HBM: only the candidate tokens' rows are candidate-specific; prefix keys, suffix rows, cos/sin and
    # the baseline are shared by every candidate and stay in the 50 MB L2
    used_row_bytes = 2 * (hs + min(KV, hs)) * D * tb if hs < H else row_bytes
    out["hbm_bytes"] = shape.cand * used_row_bytes + L * 4 + hs * (4 + 16 + 4 + 4 * shape.offsets)
    # L2 -> SM: what every program loads (masked lanes are not fetched)
    per_prog = (L * D * tb * 2 * 2  # q rows and dependent k rows, both models
                + p * D * 4 * 2  # rotated prefix keys, fp32, both models
                + 2 * L * (D // 2) * 4 * 2  # cos/sin for rows and dependent keys
                + L * 4 * 2)  # ids for rows and keys
    out["l2_bytes"] = hs * per_prog
    t = {
        "dot (fp32 IEEE, FMA units)": out["dot_flops"] / FP32_FLOPS,
        "RoPE": out["rope_flops"] / FP32_FLOPS,
        "masks/reductions (ALU)": out["alu_ops"] / ALU_S,
        "exp2 (MUFU)": out["exp2"] / MUFU_S,
    }
    out["t_compute"] = sum(t.values())
    out["t_compute_parts"] = t
    out["t_hbm"] = out["hbm_bytes"] / HBM_BYTES_S
    out["t_l2"] = out["l2_bytes"] / L2_BYTES_S
    out["t_bound"] = max(out["t_compute"], out["t_hbm"], out["t_l2"])
    out["cands_per_s_roofline"] = 1 / out["t_bound"]
    out["t_compute_tf32x3"] = 3 * out["dot_flops"] / TF32_FLOPS + sum(v for k, v in t.items() if "dot" not in k)

    # direct path: every program projects its rows (q, head h) and keys (k, kv head) from the embeddings
    dbk = shape.direct_block_k
    proj_rows = sum(bl + _ceil(min(t0 + bl, L), dbk) for t0 in range(0, L, bl))
    out["direct_flops"] = hs * proj_rows * hidden * D * 2 * 2 + out["dot_flops"]
    out["direct_l2_bytes"] = hs * (2 * D * hidden * 2 * 2 + proj_rows * hidden * 2 * 2)  # W slices + x, bf16
    out["t_direct"] = max(out["direct_flops"] / FP32_FLOPS, out["direct_l2_bytes"] / L2_BYTES_S)

    # table build: one GEMM [V, hidden] x [hidden, (H + KV) D] per model
    out["build_flops"] = 2 * V * hidden * (H + KV) * D * 2
    out["build_bytes"] = 2 * V * hidden * 2 + out["table_bytes"]
    out["t_build"] = max(out["build_flops"] / FP32_FLOPS, out["build_bytes"] / HBM_BYTES_S)
    return out


def _fmt_bytes(n):
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= k:
            return f"{n / k:.3g} {unit}"
    return f"{n:.0f} B"


def report(shape: Shape) -> str:
    bf, fp = estimate(shape, 2), estimate(shape, 4)
    us = lambda s: f"{s * 1e6:.3g} µs"
    lines = [
        f"Scenario: prefix {shape.prefix}, candidate {shape.cand}, suffix {shape.suffix} tokens "
        f"({bf['rows']} dependent rows, row tile {bf['block_l']}, key tile {shape.block_k}); "
        f"{shape.heads_scored} heads scored; {shape.offsets} band offsets; KL on.",
        "",
        "| quantity | bf16 table | fp32 table |",
        "|---|---|---|",
        f"| table size (both models, all {QWEN2_7B['vocab']} rows) | {_fmt_bytes(bf['table_bytes'])} | "
        f"{_fmt_bytes(fp['table_bytes'])} |",
        f"| causal cells per head (useful / computed incl. tile padding) | "
        f"{bf['useful_cells_per_head']} / {bf['computed_cells_per_head']} | same |",
        f"| dot FLOPs per candidate (useful / computed) | {bf['useful_dot_flops'] / 1e6:.3g} M / "
        f"{bf['dot_flops'] / 1e6:.3g} M | same |",
        f"| other work per candidate | RoPE {bf['rope_flops'] / 1e6:.2g} MFLOP, ~{bf['alu_ops'] / 1e6:.2g} M ALU ops, "
        f"{bf['exp2'] / 1e3:.3g} k exp2 | same |",
        f"| HBM bytes per candidate (candidate tokens' table rows) | {_fmt_bytes(bf['hbm_bytes'])} | "
        f"{_fmt_bytes(fp['hbm_bytes'])} |",
        f"| L2->SM bytes per candidate (every program's loads) | {_fmt_bytes(bf['l2_bytes'])} | "
        f"{_fmt_bytes(fp['l2_bytes'])} |",
        f"| time: compute (fp32 IEEE dots) | {us(bf['t_compute'])} | {us(fp['t_compute'])} |",
        f"| time: HBM | {us(bf['t_hbm'])} | {us(fp['t_hbm'])} |",
        f"| time: L2 (no L1 reuse) | {us(bf['t_l2'])} | {us(fp['t_l2'])} |",
        f"| **roofline candidates/s (slowest of the three)** | **{bf['cands_per_s_roofline'] / 1e6:.2g} M** | "
        f"**{fp['cands_per_s_roofline'] / 1e6:.2g} M** |",
        f"| direct path (no table): FLOPs, L2 bytes per candidate | {bf['direct_flops'] / 1e9:.3g} GFLOP, "
        f"{_fmt_bytes(bf['direct_l2_bytes'])} | - |",
        f"| direct path roofline candidates/s | {1 / bf['t_direct'] / 1e3:.3g} k | - |",
        f"| table build (both models): FLOPs, time at peak fp32 | {bf['build_flops'] / 1e12:.3g} TFLOP, "
        f"{bf['t_build']:.2g} s | {fp['t_build']:.2g} s |",
    ]
    parts = ", ".join(f"{k} {us(v)}" for k, v in bf["t_compute_parts"].items())
    lines += ["", f"Compute breakdown (bf16 table): {parts}. With tf32x3 dots on tensor cores the compute "
              f"term would be {us(bf['t_compute_tf32x3'])}."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefix", type=int, default=30)
    ap.add_argument("--cand", type=int, default=8)
    ap.add_argument("--suffix", type=int, default=5)
    ap.add_argument("--heads", type=int, default=28)
    ap.add_argument("--offsets", type=int, default=0)
    a = ap.parse_args(argv)
    print(report(Shape(a.prefix, a.cand, a.suffix, a.heads, a.offsets)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
