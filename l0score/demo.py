"""`l0score demo`: the tiny synthetic pair, and the planted trigger found among random candidates."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
from rich.table import Table
from tqdm import tqdm

from .cache_dir import cache_dir


def demo_pair(seed: int = 0) -> Path:
    """The tiny demo pair under the cache directory, made on first use (atomically, so an
    interrupted build is redone rather than trusted)."""
    from .synthetic import make_pair

    final = cache_dir() / f"demo-pair-tiny-seed{seed}"
    if (final / "trigger.json").is_file():
        return final
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    make_pair(tmp, size="tiny", seed=seed)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def allowed_pool(pair) -> np.ndarray:
    """Real, non-special token ids (padding rows and special tokens excluded)."""
    ids = np.arange(pair.n_tokens)
    return ids[~np.isin(ids, sorted(pair.special_ids))]


def run_demo(n_random: int = 3000, seed: int = 0, backend: str = "auto", out: str | None = None, console=None) -> dict:
    from .model_pair import ModelPair
    from .scorer import Scorer

    start = time.perf_counter()
    pair_dir = demo_pair()
    truth = json.loads((pair_dir / "trigger.json").read_text())
    trigger = list(truth["trigger_ids"])
    pair = ModelPair.load(pair_dir / "base", pair_dir / "dormant")
    scorer = Scorer(pair, backend=backend, template="chat")
    rng = np.random.default_rng(seed)
    pool = allowed_pool(pair)
    candidates = [trigger] + rng.choice(pool, size=(n_random, len(trigger))).tolist()

    chunk = 500
    parts = []
    for s in tqdm(range(0, len(candidates), chunk), desc="scoring", unit="batch", disable=console is None):
        parts.append(scorer.score_batch(candidates[s : s + chunk]))
    max_abs = np.concatenate([p.max_abs.cpu().numpy() for p in parts])
    kl = np.concatenate([p.kl.cpu().numpy() for p in parts])
    elapsed = time.perf_counter() - start

    ranks = {name: int((vals > vals[0]).sum()) + 1 for name, vals in (("max_abs", max_abs), ("kl", kl))}
    tok = pair.tokenizer
    order = np.argsort(-kl)[:10]
    result = {
        "pair": str(pair_dir), "trigger_ids": trigger, "trigger_text": truth["trigger_text"],
        "n_candidates": len(candidates), "rank": ranks, "seconds": elapsed, "backend": scorer.backend.name,
        "top": [{"token_ids": candidates[b], "text": tok.decode(candidates[b]), "kl": float(kl[b]),
                 "max_abs": float(max_abs[b]), "is_trigger": bool(b == 0)} for b in order],
    }
    out_path = Path(out) if out else cache_dir() / "demo-results.json"
    out_path.write_text(json.dumps(result, indent=1))
    if console is not None:
        table = Table(title=f"top 10 of {len(candidates)} candidates by kl (chat template, backend {scorer.backend.name})")
        for col in ("rank", "text", "kl", "max_abs", ""):
            table.add_column(col)
        for rank, row in enumerate(result["top"], 1):
            table.add_row(str(rank), repr(row["text"]), f"{row['kl']:.4f}", f"{row['max_abs']:.4f}",
                          "<- planted trigger" if row["is_trigger"] else "")
        console.print(table)
        console.print(f"planted trigger {truth['trigger_text']!r} ranks #{ranks['kl']} by kl and #{ranks['max_abs']} "
                      f"by max_abs among {len(candidates)} candidates ({elapsed:.1f} s); results in {out_path}")
    return result
