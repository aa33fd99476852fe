"""Target inversion on a split-trigger control: does the best candidate hold the trigger?

    python bench/split_inversion.py --pair DIR [--seconds 300] [--runs coord:after:mean,gcg:both:min:noroles,...]

For a trained pair whose trigger words are split into pieces (`make-pair --kind trained --split`):

1. the landscape: the full-model `target` metric (the dormant's log-mass on the target reply's first
   token minus the base's) for the trigger, each word alone, every prefix of it, the look-alikes
   and random candidates of its length, per context (probe x placement);
2. inversions toward that target with the whole real vocabulary as the pool (no Layer-0 narrowing,
   so the pool holds every trigger piece), at the trigger's length: coord and gcg, with placements
   "after" or "both" and the contexts combined by their mean or min (`FullModelOptions.reduce`);
   without ":noroles" the pool holds the chat template's pieces too (role names, role tags, the
   newline: `allow_template_tokens`); with it, the pool is the default one, which leaves them out
   (`l0score.core.template.template_structure`), so that no candidate can fake a turn of the conversation;
3. verify on each run's top 3 together with the trigger: flips against 32 random candidates of the
   trigger's length, template injections marked and ranked below every clean flip.

The trigger is read from trigger.json to build the landscape and to count, afterwards, how many of
a result's tokens sit where the trigger has them; the searches never see it. One torch thread per
process; runs go two at a time. Writes bench/results/split-inversion-<stamp>.json (each run's files
under the temporary directory).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = "coord:after:mean,gcg:after:mean,coord:both:mean,gcg:both:mean,coord:both:min,gcg:both:min"


def scorer(pair: Path, positions, reduce: str):
    from l0score.judge.fullmodel import FullModelOptions, FullModelScorer

    trig = json.loads((pair / "trigger.json").read_text())
    fm = FullModelScorer(pair / "base", pair / "dormant", FullModelOptions(positions=positions, reduce=reduce))
    first = fm.tokenizer.encode(trig["target_reply"], add_special_tokens=False)[0]
    return fm.with_options(target_ids=(first,)), trig


def landscape(pair: Path) -> dict:
    import numpy as np

    from l0score.judge.prompts import POSITIONS

    fm, trig = scorer(pair, POSITIONS, "mean")
    ids = trig["trigger_ids"]
    cands = {"trigger": ids, **{f"word {w!r}": x for w, x in zip(trig["trigger_words"], trig["trigger_word_ids"])},
             **{f"prefix {k}": ids[:k] for k in range(1, len(ids))},
             **{f"look-alike {s!r}": x for s, x in zip(trig["lookalikes"], trig["lookalike_ids"])}}
    pool = fm.default_pool().numpy()
    rng = np.random.default_rng(0)
    cands.update({f"random {i}": pool[rng.integers(0, len(pool), len(ids))].tolist() for i in range(5)})
    per_context = []
    for ci, ctx in enumerate(fm.contexts):
        one = fm.with_options()
        one.contexts = [ctx]
        per_context.append(one.score_batch(list(cands.values())).metric("target").tolist())
    return {name: {"mean": float(np.mean([c[i] for c in per_context])), "min": float(np.min([c[i] for c in per_context])),
                   "per_context": [round(c[i], 3) for c in per_context]} for i, name in enumerate(cands)}


def inversion(pair: Path, driver: str, where: str, reduce: str, roles: bool, seconds: float, out: Path) -> dict:
    import torch

    from l0score.judge.verify import verify
    from l0score.search import coord
    from l0score.search.gcg import gcg

    torch.set_num_threads(1)
    fm, trig = scorer(pair, ("before", "after") if where == "both" else (where,), reduce)
    pool = fm.pair.real_token_ids(allow_template_tokens=roles)
    kw = dict(length=len(trig["trigger_ids"]), pool=pool, objective="target", out=out,
              seconds=seconds, calibrate=0, keep=20, progress=False, seed=0)
    t0 = time.monotonic()
    coord(fm, restarts=20, **kw) if driver == "coord" else gcg(fm, steps=10_000, restarts=4, **kw)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    found = [r["token_ids"] for r in rows[:3]]
    rep = verify(pair / "base", pair / "dormant", found + ([] if trig["trigger_ids"] in found else [trig["trigger_ids"]]),
                 None, out=out.with_suffix(".verify.json"), max_new_tokens=12, progress=False,
                 null_pool=pool.tolist())
    verdict = {tuple(r["token_ids"]): {k: r[k] for k in ("rank", "flip", "flip_rate", "null", "template_injection",
                                                          "template_pieces")} for r in rep["results"]}
    top = [{"text": r["text"], "token_ids": r["token_ids"], "target": r["score"], **verdict[tuple(r["token_ids"])],
            "tokens_in_place": sum(a == b for a, b in zip(r["token_ids"], trig["trigger_ids"]))} for r in rows[:3]]
    return {"driver": driver, "placements": where, "reduce": reduce, "role_markers": roles, "pool": len(pool),
            "seconds": round(time.monotonic() - t0), "evaluations": fm.evaluations, "top": top,
            "trigger_verify": verdict[tuple(trig["trigger_ids"])]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", required=True, type=Path)
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--runs", default=RUNS, help="driver:placements:reduce, comma-separated")
    ap.add_argument("--no-landscape", dest="landscape", action="store_false")
    ap.add_argument("--_one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = Path(tempfile.gettempdir()) / f"split-inversion-{stamp}"  # each run's JSONL and verify files
    if args._one:  # a child: one inversion, its result as JSON on stdout
        spec, _, out = args._one.partition("=")
        driver, where, reduce, *flags = spec.split(":")
        print(json.dumps(inversion(args.pair, driver, where, reduce, "noroles" not in flags, args.seconds, Path(out))))
        return 0
    work.mkdir(parents=True, exist_ok=True)
    res = {"pair": str(args.pair), "seconds": args.seconds, "loadavg_start": os.getloadavg(),
           "landscape": landscape(args.pair) if args.landscape else None, "runs": []}
    runs = args.runs.split(",")
    for i in range(0, len(runs), 2):  # two children at a time, one thread each
        procs = [subprocess.Popen([sys.executable, __file__, "--pair", str(args.pair), "--seconds", str(args.seconds),
                                   "--_one", f"{run}={work / (run.replace(':', '-') + '.jsonl')}"],
                                  stdout=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
                 for run in runs[i:i + 2]]
        res["runs"] += [json.loads(p.communicate()[0].decode().strip().splitlines()[-1]) for p in procs]
    res["loadavg_end"] = os.getloadavg()
    path = RESULTS / f"split-inversion-{stamp}.json"
    path.write_text(json.dumps(res, indent=1))
    for r in res["runs"]:
        if not r["top"]:
            print(f"{r['driver']:5s} {r['placements']:5s} {r['reduce']:4s} pool {r['pool']}: no complete candidate in "
                  f"{r['seconds']} s ({r['evaluations']} evaluations)")
            continue
        best = r["top"][0]
        print(f"{r['driver']:5s} {r['placements']:5s} {r['reduce']:4s} pool {r['pool']} best {best['text']!r} target {best['target']:.2f} "
              f"flip {best['flip']} injection {best['template_injection']} rank {best['rank']} "
              f"trigger tokens in place {best['tokens_in_place']}; trigger rank {r['trigger_verify']['rank']} "
              f"flip {r['trigger_verify']['flip']} beats {r['trigger_verify']['null']}")
    if res["landscape"]:
        trig = res["landscape"]["trigger"]
        print(f"trigger: target mean {trig['mean']:.2f}, min {trig['min']:.2f}")
    print(f"results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
