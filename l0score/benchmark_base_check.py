"""`l0score bench --base-check`: time and peak resident memory of the base check on a full
Qwen2-7B-shaped pair (28 layers, bf16, about 15 GB per checkpoint), and optionally on given pairs.

The pair is written by `write_qwen2_7b_pair`, which streams random bf16 values into the safetensors
files chunk by chunk (header first, then each tensor's bytes), so the writer never holds more than
one chunk. The dormant is the base with only its MLP tensors changed (relative norm about 0.016,
the shape of the change a public dormant model showed against its true base); every other tensor
is written from the same bytes, so it is bit-identical. The base check runs in a fresh process
(a new interpreter) whose own peak RSS (ru_maxrss) is what is reported; the pair is deleted
afterwards unless kept.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

QWEN2_7B = dict(hidden=3584, heads=28, kv_heads=4, head_dim=128, intermediate=18944, layers=28, vocab=152064)
MLP_REL = 0.016  # relative norm of the MLP change in the written dormant
_CHUNK = 1 << 24  # elements generated and written at a time (32 MB in bf16)


@dataclass
class BaseCheckBenchOptions:
    """out_dir: where results go; work_dir: where the 7B-shaped pair is written (about 31 GB);
    layers: decoder layers of the written pair (28 = Qwen2-7B); keep: do not delete the pair;
    pairs: extra (label, base, dormant) triples measured as they are (e.g. the real controls);
    synthetic: write and measure the 7B-shaped pair at all."""

    out_dir: Path
    work_dir: Path
    layers: int = 28
    n_shards: int = 4
    keep: bool = False
    synthetic: bool = True
    pairs: list[tuple[str, str, str]] = field(default_factory=list)
    command: str = ""
    progress: object = None  # callable(str) for progress lines, or None


def tensor_plan(layers: int) -> list[tuple[str, tuple[int, ...], float]]:
    """(name, shape, std) of every Qwen2-7B tensor in state-dict order."""
    h, H, KV, D, inter, V = (QWEN2_7B[k] for k in ("hidden", "heads", "kv_heads", "head_dim", "intermediate", "vocab"))
    plan = [("model.embed_tokens.weight", (V, h), 0.02)]
    for i in range(layers):
        p = f"model.layers.{i}."
        plan += [(p + "self_attn.q_proj.weight", (H * D, h), h ** -0.5), (p + "self_attn.q_proj.bias", (H * D,), 0.5),
                 (p + "self_attn.k_proj.weight", (KV * D, h), h ** -0.5), (p + "self_attn.k_proj.bias", (KV * D,), 0.5),
                 (p + "self_attn.v_proj.weight", (KV * D, h), h ** -0.5), (p + "self_attn.v_proj.bias", (KV * D,), 0.1),
                 (p + "self_attn.o_proj.weight", (h, H * D), (H * D) ** -0.5),
                 (p + "mlp.gate_proj.weight", (inter, h), h ** -0.5), (p + "mlp.up_proj.weight", (inter, h), h ** -0.5),
                 (p + "mlp.down_proj.weight", (h, inter), inter ** -0.5),
                 (p + "input_layernorm.weight", (h,), 0.05), (p + "post_attention_layernorm.weight", (h,), 0.05)]
    plan += [("model.norm.weight", (h,), 0.05), ("lm_head.weight", (V, h), h ** -0.5)]
    return plan


def _shards(plan: list, n_shards: int) -> list[list[int]]:
    """Contiguous groups of about equal byte size."""
    sizes = [math.prod(shape) for _, shape, _ in plan]
    target, groups, cur, acc = sum(sizes) / n_shards, [], [], 0
    for i, s in enumerate(sizes):
        cur.append(i)
        acc += s
        if acc >= target * (len(groups) + 1) and len(groups) < n_shards - 1:
            groups.append(cur)
            cur = []
    return groups + ([cur] if cur else [])


def _header(plan: list, idx: list[int]) -> bytes:
    """A safetensors header for tensors plan[idx] (bf16, in that order), padded to 8 bytes."""
    meta, off = {"__metadata__": {"format": "pt"}}, 0
    for i in idx:
        name, shape, _ = plan[i]
        n = math.prod(shape) * 2
        meta[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(meta, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def write_qwen2_7b_pair(out, layers: int = 28, n_shards: int = 4, seed: int = 0, progress=None) -> dict:
    """Write base/ and dormant/ (MLP tensors changed, everything else the same bytes) under `out`,
    streaming: one chunk of each model in memory. Returns {"base": dir, "dormant": dir, "bytes": n}."""
    out = Path(out)
    plan = tensor_plan(layers)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(_CHUNK, generator=gen)  # one block of MLP noise, reused (its content is irrelevant)
    dirs = {role: out / role for role in ("base", "dormant")}
    weight_map, total = {}, 0
    groups = _shards(plan, n_shards)
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(_config(layers), indent=1))
    for s, idx in enumerate(groups):
        fname = f"model-{s + 1:05d}-of-{len(groups):05d}.safetensors"
        head = _header(plan, idx)
        with open(dirs["base"] / fname, "wb") as fb, open(dirs["dormant"] / fname, "wb") as fd:
            fb.write(head)
            fd.write(head)
            for i in idx:
                name, shape, std = plan[i]
                weight_map[name] = fname
                total += _write_tensor(fb, fd, math.prod(shape), std, ".mlp." in name, gen, noise)
        if progress:
            progress(f"wrote shard {s + 1}/{len(groups)} of both models ({total / 2**30:.1f} GiB each so far)")
    index = json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1)
    for d in dirs.values():
        (d / "model.safetensors.index.json").write_text(index)
    return {"base": dirs["base"], "dormant": dirs["dormant"], "bytes": total}


def _write_tensor(fb, fd, n: int, std: float, changed: bool, gen, noise) -> int:
    mean = 1.0 if std == 0.05 else 0.0  # norms sit around 1
    for start in range(0, n, _CHUNK):
        m = min(_CHUNK, n - start)
        x = torch.randn(m, generator=gen).mul_(std).add_(mean)
        b = x.to(torch.bfloat16)
        fb.write(b.view(torch.int16).numpy().tobytes())
        if changed:
            b = x.add_(noise[:m], alpha=MLP_REL * std).to(torch.bfloat16)
        fd.write(b.view(torch.int16).numpy().tobytes())
    return 2 * n


def _config(layers: int) -> dict:
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": QWEN2_7B["hidden"],
            "num_attention_heads": QWEN2_7B["heads"], "num_key_value_heads": QWEN2_7B["kv_heads"],
            "intermediate_size": QWEN2_7B["intermediate"], "num_hidden_layers": layers,
            "vocab_size": QWEN2_7B["vocab"], "rms_norm_eps": 1e-6, "rope_theta": 1e6,
            "max_position_embeddings": 32768, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}


# --------------------------------------------------------------------------------------------
# Measuring


def child_main(argv: list[str]) -> None:
    """In a fresh interpreter (`measure` starts it): one torch thread, the base check of argv[1]
    against argv[2:], then this process's own peak RSS; the figures go to the JSON file argv[0]."""
    import resource

    torch.set_num_threads(1)
    from .analysis.base_check import base_check

    out, dormant, bases = argv[0], argv[1], argv[2:]
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        r = base_check(dormant, bases)
        fc = r.first_changed
        res = {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
               "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
               "verdict": r.verdict, "first_changed": fc.label if fc else None,
               "n_tensors": r.chosen.n_tensors, "n_changed": r.chosen.n_changed,
               "median_rel_norm": r.chosen.median_rel_norm}
    except Exception as exc:  # reported in the results instead of a lost child traceback
        res = {"error": f"{type(exc).__name__}: {exc}"}
    Path(out).write_text(json.dumps(res))


def measure(dormant, bases: list) -> dict:
    """The base check of `dormant` against `bases` in a fresh interpreter: its wall and CPU seconds,
    its own peak RSS (nothing of this process counts), and what it found."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        code = "import sys; from l0score.benchmark_base_check import child_main; child_main(sys.argv[1:])"
        proc = subprocess.run([sys.executable, "-c", code, str(out), str(dormant), *map(str, bases)],
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
        if not out.is_file():
            return {"error": f"the measuring process exited {proc.returncode}: {proc.stderr[-500:]}"}
        return json.loads(out.read_text())


def _du_gb(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**30


def run_base_check_bench(options: BaseCheckBenchOptions) -> dict:
    """Measure the base check (see the module docstring); writes base-check-STAMP.json and .md under
    options.out_dir and returns the result."""
    say = options.progress or (lambda s: None)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    res = {"stamp": stamp, "command": options.command, "load_before": os.getloadavg(), "runs": []}
    if options.synthetic:
        work = Path(options.work_dir) / f"base-check-7b-{stamp}"
        try:
            t0 = time.perf_counter()
            pair = write_qwen2_7b_pair(work, options.layers, options.n_shards, progress=say)
            write_s = time.perf_counter() - t0
            say(f"pair written in {write_s:.0f} s; running the base check")
            run = measure(pair["dormant"], [pair["base"]])
            res["runs"].append({"label": f"Qwen2-7B-shaped, {options.layers} layers, bf16, MLP changed",
                                "gib_per_checkpoint": _du_gb(pair["base"]), "write_seconds": write_s, **run})
        finally:
            if not options.keep:
                shutil.rmtree(work, ignore_errors=True)
    for label, base, dormant in options.pairs:
        say(f"base check on {label}")
        res["runs"].append({"label": label, "gib_per_checkpoint": _du_gb(base), **measure(dormant, [base])})
    res["load_after"] = os.getloadavg()
    out = Path(options.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"base-check-{stamp}.json").write_text(json.dumps(res, indent=1))
    (out / f"base-check-{stamp}.md").write_text(markdown(res))
    return res


def markdown(res: dict) -> str:
    lines = [f"# Base check benchmark {res['stamp']}", "", f"`{res['command']}`  ",
             f"load average before {res['load_before'][0]:.1f}, after {res['load_after'][0]:.1f}", "",
             "| pair | GiB per checkpoint | seconds (wall) | CPU seconds | peak RSS GiB | verdict | first changed |",
             "|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        if "error" in r:
            lines.append(f"| {r['label']} | {r['gib_per_checkpoint']:.2f} | error: {r['error']} | | | | |")
            continue
        lines.append(f"| {r['label']} | {r['gib_per_checkpoint']:.2f} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
                     f"{r['peak_rss_gb']:.2f} | {r['verdict']} | {r['first_changed']} |")
    return "\n".join(lines) + "\n"
