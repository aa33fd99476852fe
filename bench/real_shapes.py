"""The Layer-0 engine on a real model's Layer-0 shapes next to the Qwen2-7B ones, in one run.

    python bench/real_shapes.py BASE DORMANT [--label real] [--reps 3] [--candidates 16384]
                                [--dtype float32] [--out bench/results/real-shapes-<stamp>.{json,md}]

`l0score bench` measures one pair per run; this runs the same children (l0score/benchmark.py:
`native` = Scorer.score_batch of 8-token candidates in the ~30-token chat prefix, `extensions` =
Scorer.score_extensions over the whole default pool for cached prefixes of 0, 2, 4 and 7 tokens, in
the chat template's default and the ~30-token prefix) on the synthetic qwen2-7b-l0 pair (made under the
cache directory if missing) and on BASE/DORMANT, one child process at a time, alternating the pairs,
so the rates share the machine's state. Threads: the native backend's OpenMP threads
(OMP_NUM_THREADS). The load average is recorded around every child.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from l0score import benchmark  # noqa: E402
from l0score.core.model_pair import ModelPair  # noqa: E402
from l0score.synthetic.cached import default_pair  # noqa: E402


def shape(base: str, dormant: str) -> dict:
    c = ModelPair.load(base, dormant).config
    return {"vocab_rows": c.vocab_rows, "hidden": c.hidden_size, "heads": c.num_heads, "kv_heads": c.num_kv_heads,
            "head_dim": c.head_dim}


def child(kind: str, spec: dict) -> dict:
    before = os.getloadavg()
    t = time.perf_counter()
    out = benchmark._run_child(kind, spec)
    out["child_seconds"] = time.perf_counter() - t
    out["load_average"] = {"before": before, "after": os.getloadavg()}
    return out


def markdown(res: dict) -> str:
    """Rates as wall-clock/s and, in brackets, per process-CPU second (one thread: the work done,
    whatever else loads the machine; the rows' ratios should be read from these)."""
    rows = ["| pair | Layer-0 shape (vocab, hidden, heads/kv, head dim) | score_batch cand/s, 8 tokens, ~30-token prefix "
            "(per CPU s) | score_extensions ext/s, chat default (per CPU s) | score_extensions ext/s, ~30-token prefix "
            "(per CPU s) | load before -> after |", "|---|---|---:|---:|---:|---|"]
    for label, r in res["pairs"].items():
        s, nat, ext = r["shape"], r["native"], r["extensions"]
        if "error" in nat or "error" in ext:
            rows.append(f"| {label} | | {nat.get('error', '')} | {ext.get('error', '')} | | |")
            continue
        t = ext["templates"]
        cells = [f"{x['ext_per_s']:,.0f} ({x.get('ext_per_cpu_s', float('nan')):,.0f}); prefix {x['prefix_len']}, "
                 f"suffix {x['suffix_len']}" for x in (t.get("chat", t.get("raw")), t.get("chat30", t.get("raw")))]
        rows.append(f"| {label} | {s['vocab_rows']:,}, {s['hidden']}, {s['heads']}/{s['kv_heads']}, {s['head_dim']} "
                    f"| {nat['cand_per_s']:,.0f} ({1e6 / nat['cpu_us_per_cand']:,.0f}); prefix {nat['prefix_len']} "
                    f"| {cells[0]} | {cells[1]} "
                    f"| {nat['load_average']['before'][0]:.1f} -> {ext['load_average']['after'][0]:.1f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base")
    ap.add_argument("dormant")
    ap.add_argument("--label", default="real")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--candidates", type=int, default=16384)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--out")
    args = ap.parse_args()
    qwen = default_pair("qwen2-7b-l0")
    pairs = {"qwen2-7b-l0 (synthetic)": (str(qwen / "base"), str(qwen / "dormant")),
             args.label: (str(Path(args.base).resolve()), str(Path(args.dormant).resolve()))}
    res = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "dtype": args.dtype, "reps": args.reps,
           "load_average_start": os.getloadavg(), "pairs": {}}
    for label, (b, d) in pairs.items():
        res["pairs"][label] = {"base": b, "dormant": d, "shape": shape(b, d)}
    for kind in ("native", "extensions"):  # one kind at a time, both pairs back to back
        for label, (b, d) in pairs.items():
            spec = {"base": b, "dormant": d, "prefix": 30, "length": 8, "seed": 0, "dtype": args.dtype,
                    "reps": args.reps, "n": args.candidates, "n_batch": 4096}
            print(f"{kind} {label} (load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
            res["pairs"][label][kind] = child(kind, spec)
    res["load_average_end"] = os.getloadavg()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / f"real-shapes-{stamp}.json"
    out.write_text(json.dumps(res, indent=2))
    out.with_suffix(".md").write_text(f"`{res['command']}` ({res['date']}, OMP_NUM_THREADS={res['omp_num_threads']})\n\n"
                                      + markdown(res) + "\n")
    print(markdown(res))
    print(f"load average start {res['load_average_start']}, end {res['load_average_end']}; written {out}")


if __name__ == "__main__":
    main()
