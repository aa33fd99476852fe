"""Compile the kernels for an NVIDIA target without a GPU: the GPU-readiness check.

    python -m l0score.kernels.aot_check [--arch 90] [--all-configs]

Runs Triton's full NVIDIA pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin, with the ptxas that
ships in the triton wheel) for Qwen2-7B Layer-0 shapes (D = 128, H = 28, KV = 4, hidden = 3584)
and prints each kernel's registers, spill stack and shared memory from the cubin. No driver is
touched, so it works on this CPU-only machine; it proves the kernels *compile* for sm_90 (the
interpreter cannot: it ignores tile-size, layout and type rules), not that they run or how fast.
Must run without TRITON_INTERPRET (the interpreter replaces @triton.jit at decoration time).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import direct, pair_scan, score, token_table
from ._launch import interpreting

QWEN2_7B = dict(hidden=3584, H=28, KV=4, D=128)


def _signature(kernel, types: dict, consts: dict) -> dict:
    return {n: "constexpr" if n in consts else types.get(n, "i32") for n in kernel.arg_names}


def _score_case(table_dtype="bf16", region_all=False, baseline=True, n_offsets=3, want_kl=True, dot="ieee",
                block_l=16):
    d = QWEN2_7B["D"]
    consts = dict(D=d, HALF=d // 2, HALF_PAD=d // 2, GROUP=QWEN2_7B["H"] // QWEN2_7B["KV"], REGION_ALL=region_all,
                  HAS_BASELINE=baseline, N_OFFSETS=n_offsets, N_OFF_PAD=triton.next_power_of_2(max(1, n_offsets)),
                  WANT_KL=want_kl, DOT_PREC=dot, BLOCK_L=block_l)
    types = {n: "*i32" for n in ("ids_ptr", "cand_ptr", "dep_ptr", "heads_ptr")}
    types.update({n: "*fp32" for n in ("pk_b_ptr", "pk_d_ptr", "cos_ptr", "sin_ptr", "base_ptr", "max_ptr", "kl_ptr",
                                       "band_ptr", "emb_b_ptr", "emb_d_ptr", "norm_b_ptr", "norm_d_ptr", "w_b_ptr",
                                       "w_d_ptr", "bias_b_ptr", "bias_d_ptr")})
    types.update(tab_b_ptr=f"*{table_dtype}", tab_d_ptr=f"*{table_dtype}", offs_ptr="*i64", pos_ptr="*i64",
                 scale="fp32", eps="fp32")
    for n in ("emb_b_ptr", "emb_d_ptr", "norm_b_ptr", "norm_d_ptr", "w_b_ptr", "w_d_ptr"):
        types[n] = "*bf16"  # direct path: the checkpoint's bf16 tensors
    return types, consts


def _table_case(out_bf16=True, has_ids=False):
    types = dict(ids_ptr="*i64", embed_ptr="*bf16", norm_ptr="*bf16", w_ptr="*bf16", b_ptr="*fp32",
                 out_ptr="*i16" if out_bf16 else "*fp32", eps="fp32")
    return types, dict(HAS_IDS=has_ids, OUT_BF16=out_bf16)


def _pair_case(table_dtype="bf16", emit=False, diag=False):
    d = QWEN2_7B["D"]
    types = dict(ids_ptr="*i32", rows_ptr="*i32", cos_ptr="*fp32", sin_ptr="*fp32", tab_b_ptr=f"*{table_dtype}",
                 tab_d_ptr=f"*{table_dtype}", max_ptr="*fp32", cnt_ptr="*i32", val_ptr="*fp32", qi_ptr="*i32",
                 ki_ptr="*i32", scale="fp32", shift="fp32", thresh="fp32")
    return types, dict(HALF=d // 2, DIAG=diag, EMIT=emit, DOT_PREC="ieee")


def resources(cubin: bytes) -> dict:
    """REG / STACK / SHARED / LOCAL of the (single) kernel in a cubin, via the wheel's cuobjdump."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    line = next(ln for ln in out.splitlines() if "REG:" in ln)
    return {k: int(v) for k, v in (item.split(":")[:2] for item in line.split() if item.split(":")[0] in
                                   ("REG", "STACK", "SHARED", "LOCAL"))}


def compile_kernel(kernel, types, consts, config: triton.Config, arch: int = 90) -> dict:
    consts = {**consts, **config.kwargs}
    src = ASTSource(kernel, _signature(kernel, types, consts), constexprs=consts)
    out = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                         options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
    res = resources(out.asm["cubin"])
    res["shared_bytes"] = out.metadata.shared
    return res


def cases(all_configs: bool = False):
    """(label, kernel, types, consts, config): one representative compile per kernel, or every GPU
    config x the constexpr variants that change register use (table dtype, flags, row tile)."""
    out = []
    pick = (lambda cfgs: cfgs) if all_configs else (lambda cfgs: cfgs[:1])
    for cfg in pick(token_table._launch.gpu_configs):
        out.append(("token_table bf16 weights -> bf16 table", token_table._token_table_kernel, *_table_case(), cfg))
    variants = {"score bf16 table, 16 rows, KL + 3 offsets + baseline": dict()}
    if all_configs:
        variants.update({
            "score fp32 table, region all, no baseline/offsets": dict(table_dtype="fp32", region_all=True,
                                                                       baseline=False, n_offsets=0),
            "score bf16 table, 32 rows": dict(block_l=32),
            "score bf16 table, 64 rows": dict(block_l=64),
        })
    for label, v in variants.items():
        allowed = score._launch.configs_for({"BLOCK_L": v.get("block_l", 16)})
        for cfg in pick(allowed):
            out.append((label, score._score_kernel, *_score_case(**v), cfg))
    for cfg in pick(direct._launch.gpu_configs):
        out.append(("direct bf16 weights, 16 rows", direct._direct_kernel, *_score_case(), cfg))
    pair_variants = {"pair scan pass 1, bf16 table": dict()}
    if all_configs:
        pair_variants.update({
            "pair scan pass 1, fp32 table": dict(table_dtype="fp32"),
            "pair scan pass 2 (emit), bf16 table": dict(emit=True),
            "pair scan pass 2 (emit), fp32 table": dict(table_dtype="fp32", emit=True),
            "pair scan offset 0, pass 1": dict(diag=True),
            "pair scan offset 0, pass 2": dict(diag=True, emit=True),
        })
    for label, v in pair_variants.items():
        for cfg in pick(pair_scan._launch.gpu_configs):
            out.append((label, pair_scan._pair_kernel, *_pair_case(**v), cfg))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--all-configs", action="store_true")
    args = ap.parse_args(argv)
    if interpreting(score._score_kernel):
        raise SystemExit("unset TRITON_INTERPRET: the interpreter replaces @triton.jit and cannot compile")
    for label, kernel, types, consts, cfg in cases(args.all_configs):
        res = compile_kernel(kernel, types, consts, cfg, args.arch)
        print(f"sm_{args.arch} {label:<55} {cfg.kwargs} warps={cfg.num_warps} stages={cfg.num_stages}: "
              f"regs={res['REG']} spill_stack={res['STACK']} local={res['LOCAL']} shared={res['shared_bytes']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
