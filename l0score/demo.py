"""`l0score demo`: a real search on the tiny synthetic pair, and the planted trigger found."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
from .core.cache_dir import cache_dir
from .synthetic.cached import demo_pair


LENGTHS = (2, 3, 4, 5)  # what a user would try without knowing the trigger's length


def run_demo(n_random: int = 3000, seed: int = 0, backend: str = "auto", out: str | None = None,
             progress: bool = False) -> dict:
    """Exact pair scan -> beam search at every length of LENGTHS (chat template, kl, no repeated
    tokens), results of all lengths ranked by z (each against random candidates of its own length);
    then, and only then, the planted trigger is read to report its rank among the results and among
    `n_random` random candidates."""
    from .core.model_pair import ModelPair
    from .scorer import Scorer
    from .search import beam, pair_scan, seeds_from_pairs

    pair_dir = demo_pair()
    pair = ModelPair.load(pair_dir / "base", pair_dir / "dormant")
    scorer = Scorer(pair, backend=backend, template="chat")
    pool = scorer.default_pool()
    out_path = Path(out) if out else cache_dir() / "demo-results.jsonl"
    runs = {n: out_path.with_name(f"{out_path.stem}-len{n}.jsonl") for n in LENGTHS}
    for path in [out_path, *runs.values()]:
        path.unlink(missing_ok=True)
        Path(str(path) + ".ckpt.json").unlink(missing_ok=True)

    start = time.perf_counter()
    scan = pair_scan(scorer, pool, offsets=(1,), top=64, progress=progress)
    seeds = seeds_from_pairs(scan, 8)
    results = [r for n, path in runs.items() for r in beam(scorer, length=n, width=8, seeds=seeds, objective="kl",
                                                            max_repeat=1, pool=pool, out=path, progress=progress,
                                                            seed=seed)]
    results.sort(key=lambda r: -r["z"])
    out_path.write_text("".join(json.dumps(r) + "\n" for r in results))
    seconds = time.perf_counter() - start
    n_scanned = len(pool) ** 2
    # the runs' own counts of scored candidates, from the checkpoints they leave when they finish
    n_scored = sum(json.loads(Path(str(p) + ".ckpt.json").read_text())["used"] for p in runs.values())

    truth = json.loads((pair_dir / "trigger.json").read_text())  # read only now, to judge the result
    trigger = list(truth["trigger_ids"])
    found = [r["token_ids"] for r in results]
    rank = found.index(trigger) + 1 if trigger in found else None

    rng = np.random.default_rng(seed)
    randoms = pool.numpy()[rng.integers(0, len(pool), size=(n_random, len(trigger)))]
    random_kl = scorer.score_batch(randoms).kl.cpu().numpy()
    trigger_kl = float(scorer.score_batch([trigger]).kl[0])
    summary = {"pair": str(pair_dir), "trigger_ids": trigger, "trigger_text": truth["trigger_text"],
               "found_rank": rank, "top": results[:10], "seconds": seconds, "pairs_scanned": n_scanned,
               "candidates_scored": n_scored, "backend": scorer.backend.name, "trigger_kl": trigger_kl,
               "random_kl_max": float(random_kl.max()), "random_n": n_random, "results_file": str(out_path),
               "pool_size": len(pool), "lengths": list(LENGTHS)}
    (out_path.with_suffix(".summary.json")).write_text(json.dumps(summary, indent=1))
    return summary


def run_hunt_demo(seconds: float = 600.0, out: str | None = None, say=None) -> dict:
    """`l0score demo --hunt`: the hunt on a small trained backdoor (trained once, ~3-10 min, then
    cached), from its two checkpoints alone; then the trigger's rank, read from trigger.json only
    after the hunt has finished."""
    from .hunt import HuntOptions, hunt
    from .synthetic.trained import cached_trained_pair

    if say is not None:
        say("trained pair: building on first use (a few minutes on one core), then cached")
    pair_dir = cached_trained_pair(seed=0)
    out_dir = Path(out) if out else cache_dir() / "demo-hunt"
    if out_dir.exists() and not out:
        shutil.rmtree(out_dir)
    report = hunt(pair_dir / "base", pair_dir / "dormant", out_dir, HuntOptions(seconds=seconds), say=say)
    truth = json.loads((pair_dir / "trigger.json").read_text())
    rank = next((r["rank"] for r in report["results"] if r["token_ids"] == truth["trigger_ids"]), None)
    return {"report": report, "trigger_rank": rank, "trigger_text": truth["trigger_text"], "out": str(out_dir)}
