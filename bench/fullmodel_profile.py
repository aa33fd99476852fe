"""Where the time of one full-model evaluation goes, on a real pair (issue #21 item 4).

    python bench/fullmodel_profile.py BASE DORMANT [--candidates 256] [--batch 64] [--reps 3] [--positions after]
                                      [--out bench/results/fullmodel-profile-<stamp>.json]

One coordinate-ascent step as the hunt runs it (search/coord.py): `--candidates` 3-token candidates
that share their first and last tokens and differ at position 1, scored by `FullModelScorer.score_batch`
in forwards of `--batch` rows (the hunt's options: metrics kl, js, hidden, the given placements, the 3 default probes,
batch 64), 1 torch thread. Forward hooks
and wrappers time (process-CPU seconds), per call, without changing what runs:

  prefix KV      _prefix_cache: the context prefix + shared candidate head run once (LRU; "prefix KV:
                 forwards") and the cache deep-copied and repeated over the batch ("prefix KV");
  decoder layers the 30 decoder layers of each model (hooks on model.model.layers[0] / norm);
  lm_head        the output projection onto the 49,152-row vocabulary (first response position only);
  rest           score_batch's CPU time minus the above: log-softmax in float64 over the vocabulary,
                 the copy to the CPU, KL and JS, python.

Log-softmax and KL/JS are also timed alone (CPU seconds) on a [batch, 49,152] tensor for the split of "rest".
Median over --reps after a warm-up; the load average is recorded before and after.
"""
import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from l0score.judge.fullmodel import FullModelOptions, FullModelScorer, first_position_metrics  # noqa: E402


class Clock:
    """Process-CPU seconds accumulated per label: with one torch thread the work done, whatever else
    loads the machine (wall-clock shares would follow the other jobs' load)."""

    def __init__(self):
        self.s = defaultdict(float)
        self.start = {}

    def enter(self, label):
        self.start[label] = time.process_time()

    def leave(self, label):
        self.s[label] += time.process_time() - self.start.pop(label)


def instrument(scorer: FullModelScorer, clock: Clock) -> None:
    """Hooks on each model's first decoder layer (enter), final norm (leave) and lm_head; a wrapper on
    the prefix cache. The prefix cache's own forwards are counted under prefix KV only."""
    inner = scorer._prefix_cache
    state = {"in_prefix": False}

    def prefix_cache(*a, **k):
        if state["in_prefix"]:  # a candidate head's cache starts from the prompt prefix's (a nested call)
            return inner(*a, **k)
        state["in_prefix"] = True
        clock.enter("prefix KV")
        try:
            return inner(*a, **k)
        finally:
            clock.leave("prefix KV")
            state["in_prefix"] = False

    scorer._prefix_cache = prefix_cache
    name_of = lambda lb: "prefix KV: forwards" if state["in_prefix"] else lb  # noqa: E731
    for name, model in scorer.models.items():
        body = model.model
        for label, first, last in ((f"decoder layers ({name})", body.layers[0], body.norm),
                                   (f"lm_head ({name})", model.lm_head, model.lm_head)):
            # the layers: from layer 0's input to the final norm's output
            first.register_forward_pre_hook(lambda m, a, lb=label: clock.enter(name_of(lb)))
            last.register_forward_hook(lambda m, a, o, lb=label: clock.leave(name_of(lb)))


def coord_batch(pool: torch.Tensor, batch: int, seed: int = 0) -> torch.Tensor:
    """A coordinate step's batch: random first and last tokens fixed, position 1 over `batch` pool tokens."""
    g = torch.Generator().manual_seed(seed)
    fixed = pool[torch.randint(len(pool), (3,), generator=g)]
    cands = fixed.expand(batch, 3).clone()
    cands[:, 1] = pool[torch.randperm(len(pool), generator=g)[:batch]]
    return cands


def time_softmax_kl(batch: int, vocab: int, reps: int) -> dict:
    logits = torch.randn(batch, 1, vocab)
    out = {}
    for label, fn in (("log_softmax float64 + cpu (x2 models)", lambda: torch.log_softmax(logits.double(), -1).cpu()),):
        fn()
        out[label] = 2 * statistics.median(_timed(fn) for _ in range(reps))
    lp = torch.log_softmax(logits[:, 0].double(), -1)
    out["kl + js over the vocabulary"] = statistics.median(
        _timed(lambda: first_position_metrics(lp, lp.flip(0), ("kl", "js"))) for _ in range(reps))
    return out


def _timed(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base")
    ap.add_argument("dormant")
    ap.add_argument("--candidates", type=int, default=256, help="pool tokens tried at the varied position [256]")
    ap.add_argument("--batch", type=int, default=64, help="rows per forward (FullModelOptions.batch_size) [64]")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--positions", default="after", help="comma-separated placements [after: the hunt's]")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()
    scorer = FullModelScorer(args.base, args.dormant, FullModelOptions(
        device="cpu", positions=tuple(args.positions.split(",")), batch_size=args.batch))
    clock = Clock()
    instrument(scorer, clock)
    pool = scorer.default_pool()
    runs = []
    for rep in range(args.reps + 1):  # the first is the warm-up (and fills the prefix LRU for its head)
        clock.s.clear()
        c0, t0 = time.process_time(), time.perf_counter()
        scorer.score_batch(coord_batch(pool, args.candidates, seed=rep))  # a new shared head each time: prefix KV runs
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if rep:
            runs.append({"wall": wall, "cpu": cpu, **clock.s})
    evals = args.candidates * len(scorer.contexts)
    med = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in runs[0]}
    parts = {k: v for k, v in med.items() if k not in ("wall", "cpu")}
    if "prefix KV" in parts:  # the copy of the cache per batch = the stage minus its own forwards
        parts["prefix KV"] -= parts.get("prefix KV: forwards", 0.0)
    parts["rest (log-softmax, copies, KL/JS, python)"] = med["cpu"] - sum(parts.values())
    cfg = scorer.models["base"].config
    res = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "threads": 1,
           "pair": {"base": args.base, "dormant": args.dormant}, "positions": list(scorer.positions),
           "contexts": len(scorer.contexts), "candidates": args.candidates, "batch": args.batch, "evaluations": evals,
           "context_tokens": [{"prefix": len(c.prefix_ids), "suffix": len(c.suffix_ids)} for c in scorer.contexts],
           "model": {"layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "vocab": cfg.vocab_size},
           "seconds": med, "evaluations_per_s": evals / med["wall"], "evaluations_per_cpu_s": evals / med["cpu"],
           "parts": parts, "alone": time_softmax_kl(args.batch, cfg.vocab_size, 5),
           "load_average": {"before": load, "after": os.getloadavg()}}
    out = Path(args.out or Path(__file__).resolve().parent / "results" / f"fullmodel-profile-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.write_text(json.dumps(res, indent=2))
    print(f"{evals} evaluations ({args.candidates} candidates x {len(scorer.contexts)} contexts) in {med['wall']:.2f} s wall, "
          f"{med['cpu']:.2f} s CPU: {res['evaluations_per_s']:.1f} eval/s ({res['evaluations_per_cpu_s']:.1f} per CPU s)")
    print("| part | CPU seconds per coord step | share |\n|---|---:|---:|")
    for k, v in parts.items():
        print(f"| {k} | {v:.3f} | {v / med['cpu']:.0%} |")
    for k, v in res["alone"].items():
        print(f"| alone: {k} | {v:.3f} | |")
    print(f"load average before {load}, after {res['load_average']['after']}; written {out}")


if __name__ == "__main__":
    main()
