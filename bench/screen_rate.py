"""The exhaustive search's screen, measured on real controls: how much faster one context is than the
hunt's objective, and where the screen ranks the trigger among the pool's ordered candidates.

    python bench/screen_rate.py --only 17 [--pool DIR/layer0/pool.json] [--top 15]
        [--pairs bench/results/real_pairs.json] [--out bench/results/screen_rate.json] [--threads 1]

For each control (the trigger file is read only to judge): the hunt's full-model objective (its three
default probes, the candidate after the request) and its one-context screen (`narrowed()`, the first
probe) score the same `--rate` random candidates of the trigger's length, side by side in one run
(candidates/s of each, and their ratio); then the screen scores every ordered candidate of distinct
tokens of the pool's top `--top` (a hunt's layer0/pool.json, the trigger's tokens added if missing;
without --pool: the trigger's tokens and random real tokens), and the trigger's rank is reported for
kl, js and hidden. Rows are rewritten after every control.
"""
import argparse
import itertools
import json
import time
from pathlib import Path

from _pair_rows import each_pair

RESULTS = Path(__file__).resolve().parent / "results"


def rate(scorer, cands) -> float:
    t0 = time.perf_counter()
    scorer.score_batch(cands)
    return len(cands) / (time.perf_counter() - t0)


def measure(d: Path, pool_file: str | None, top: int, n_rate: int) -> dict:
    import torch

    from l0score.judge.fullmodel import FullModelScorer

    trig = json.loads((d / "trigger.json").read_text())["trigger_ids"]
    full = FullModelScorer.from_pretrained(d / "base", d / "dormant", positions=("after",), device="cpu")
    screen = full.narrowed()
    real = full.default_pool()
    gen = torch.Generator().manual_seed(0)
    sample = real[torch.randint(len(real), (n_rate, len(trig)), generator=gen)].tolist()
    rates = {"full": rate(full, sample), "screen": rate(screen, sample)}
    pool = json.loads(Path(pool_file).read_text())["token_ids"][:top] if pool_file else \
        real[torch.randperm(len(real), generator=gen)[:top]].tolist()
    pool = pool + [t for t in trig if t not in pool]
    cands = [list(c) for c in itertools.permutations(pool, len(trig))]
    t0 = time.perf_counter()
    values = screen.score_batch(cands)
    seconds = time.perf_counter() - t0
    at = cands.index(trig)
    ranks = {m: int((values.metric(m) > values.metric(m)[at]).sum()) + 1 for m in ("kl", "js", "hidden")}
    return {"pair": d.name, "trigger_ids": trig, "contexts": {"full": len(full.contexts), "screen": 1},
            "candidates_per_s": {k: round(v, 2) for k, v in rates.items()},
            "screen_speedup": round(rates["screen"] / rates["full"], 2), "rate_candidates": n_rate,
            "pool": "hunt" if pool_file else "random", "pool_tokens": len(pool), "ordered_candidates": len(cands),
            "screen_seconds": round(seconds, 1), "trigger_rank_by_screen": ranks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default=str(RESULTS / "real_pairs.json"))
    ap.add_argument("--only", required=True, help="comma-separated indices into the pairs file")
    ap.add_argument("--pool", help="a hunt's layer0/pool.json (one control only)")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--rate", type=int, default=256, help="random candidates each scorer rates")
    ap.add_argument("--out", default=str(RESULTS / "screen_rate.json"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    for row in each_pair(args.pairs, args.only, args.out, lambda d: measure(d, args.pool, args.top, args.rate)):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
