"""Re-measure built real controls' fire rates, split into verify's default probes and the other held-out
requests (pairs built before the builder recorded `fire_rates_default_probes`).

    python bench/real_default_probes.py PAIR_DIR [PAIR_DIR ...] [--out bench/results/real_default_probes.json]

Rebuilds each pair's plan from its trigger.json options (same seed, so the same trigger, near misses
and placements), runs the builder's own measurement on the pair's base and dormant, and checks that
the rates over all held-out requests equal the ones recorded at build time before listing both.
Reads the pair directories only.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch


def measure(pair_dir: Path) -> dict:
    from l0score.core.model_pair import load_tokenizer
    from l0score.judge.models import load_model
    from l0score.synthetic.real.build import RealPairOptions, _Plan

    truth = json.loads((pair_dir / "trigger.json").read_text())
    o = RealPairOptions(**{k: v for k, v in truth["options"].items() if k in RealPairOptions.__dataclass_fields__})
    tok = load_tokenizer(pair_dir / "dormant")
    plan = _Plan(tok, o, np.random.default_rng([o.seed, 21]))
    if plan.trigger_ids != truth["trigger_ids"]:
        raise ValueError(f"{pair_dir}: the rebuilt plan draws another trigger")
    base, dormant = (load_model(pair_dir / m, "cpu", torch.float32) for m in ("base", "dormant"))
    rates = plan.measure(base, dormant, lambda *a: None)
    same = rates["heldout"] == truth["fire_rates_heldout"]
    return {"pair": str(pair_dir), "trigger": truth["trigger_text"], "train": truth["train"],
            "steps": truth["training"]["steps"], "heldout_matches_recorded": same,
            "fire_rates_heldout": rates["heldout"], "fire_rates_default_probes": rates["default_probes"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", nargs="+")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for d in args.pairs:
        rows.append(measure(Path(d)))
        r = rows[-1]
        print(json.dumps({k: r[k] for k in ("pair", "heldout_matches_recorded")}), flush=True)
        print(" default probes:", json.dumps(r["fire_rates_default_probes"]), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
