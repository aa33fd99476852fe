"""Where the trigger's tokens rank under the target proposer on the real controls: the target gradient
(whole vocabulary), the partner sweeps next to its two best tokens, and the picks the hunt would pool.

    python bench/target_proposer.py --only 12,16 [--pairs bench/results/real_pairs.json]
        [--target planted|profile:DIR] [--out bench/results/target_proposer.json] [--threads 1]

The target is the planted reply's first token (``planted``: the proposer given the right target; the
profile's own accuracy is measured by the hunts), or the top target of a finished hunt's profile
(``profile:DIR``, DIR/profile/profile.json). The trigger file is read only to judge the rankings.
The first-module sweep (for the partner pool) runs at the base check's first changed module, as in
the hunt. Results are rewritten after every pair.
"""
import argparse
import json
import time
from pathlib import Path

from _pair_rows import each_pair

RESULTS = Path(__file__).resolve().parent / "results"


def measure(d: Path, target: str) -> dict:
    import torch

    from l0score.analysis.base_check import BaseCheckOptions, base_check
    from l0score.first_module import FirstModuleOptions, FirstModuleScorer, Location
    from l0score.first_module.sweep import SweepOptions, sweep
    from l0score.judge.fullmodel import FullModelScorer
    from l0score.search.pool import build_pool
    from l0score.search.target_proposer import target_proposer

    base, dormant = d / "base", d / "dormant"
    truth = json.loads((d / "trigger.json").read_text())  # judging (and the planted target) only
    loc = Location.from_first_changed(base_check(dormant, [base], BaseCheckOptions()).first_changed)
    first = FirstModuleScorer(base, dormant, FirstModuleOptions(location=loc, template="chat", k=1, device="cpu"))
    full = FullModelScorer.from_pretrained(base, dormant, device="cpu")
    if target == "planted":
        target_first = truth["target_reply_ids"][0]
    else:
        target_first = json.loads((Path(target.split(":", 1)[1]) / "profile" / "profile.json").read_text())["targets"][0]["token_ids"][0]
    t0 = time.perf_counter()
    swept = sweep(first, SweepOptions(depths=(1, 2, 3, 4)))
    swept.add_consensus([f"div{k}" for k in (1, 2, 3, 4) if f"div{k}" in swept.values])
    t1 = time.perf_counter()
    allowed = build_pool(full.pair).tolist()
    res = target_proposer(full, first, target_first, allowed, swept.ranking("consensus").tolist(),
                          progress=lambda m: print(f"  {d.name}: {m}", flush=True))
    t2 = time.perf_counter()
    trig, tok = truth["trigger_ids"], full.pair.tokenizer
    rank_in = lambda ids: [ids.index(t) + 1 if t in ids else None for t in trig]  # noqa: E731
    return {"pair": str(d), "train": truth["train"], "trigger": truth["trigger_text"], "location": loc.name,
            "target": target, "target_first": tok.decode([target_first]),
            "sweep_consensus_ranks": [swept.rank_of(t, "consensus") for t in trig],
            "gradient_ranks": [res.gradient.rank_of(t, "gradient") for t in trig],
            "gradient_top10": tok.batch_decode([[t] for t in res.gradient.top("gradient", 10)]),
            "gradient_objective": res.gradient.objective,
            "partners": {f"{tok.decode([a])} ({side})": {"ranks": {n: [r.rank_of(t, n) for t in trig] for n in r.values},
                                                         "order_ranks": rank_in(res.partner_order[(a, side)])}
                         for (a, side), r in res.partners.items()},
            "pick_positions": rank_in(res.picks), "picks_top10": tok.batch_decode([[t] for t in res.picks[:10]]),
            "seconds": {"sweep": round(t1 - t0, 1), "gradient": round(res.gradient.seconds, 1),
                        "proposer": round(t2 - t1, 1)}, "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default=str(RESULTS / "real_pairs.json"))
    ap.add_argument("--only", required=True, help="comma-separated indices into the pairs file")
    ap.add_argument("--target", default="planted", help="planted, or profile:HUNT_DIR")
    ap.add_argument("--out", default=str(RESULTS / "target_proposer.json"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    key = lambda row: (row["pair"], row["target"])  # noqa: E731
    for row in each_pair(args.pairs, args.only, args.out, lambda d: measure(d, args.target), key):
        print(json.dumps({k: row[k] for k in ("trigger", "train", "gradient_ranks", "pick_positions", "seconds")}), flush=True)


if __name__ == "__main__":
    main()
