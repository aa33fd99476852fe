"""The hunt on trained controls: does `l0score hunt`, from the two checkpoints alone, rank the trigger first?

For every pair (default: the acceptance pairs of bench/trained_pairs.py, built and cached on first use)
this runs the hunt with a time budget, then -- only afterwards -- reads trigger.json to report where the
trigger ended: its rank, verify's flip, the trigger tokens' positions in the analysis seeds and in the
Layer-0 pool (what each stage contributed), and seconds per stage. `--compare-profile` runs every pair
a second time without the behavioural profile.

    python bench/hunt_pairs.py --seconds 600 [--pairs bench/results/trained_pairs.json] [--only 0,1,2]
                               [--compare-profile] [--out bench/results]
    python bench/hunt_pairs.py --real [--pairs bench/results/real_pairs.json] [--max-length 3] ...

`--real` hunts the real pretrained controls of bench/real_pairs.py (SmolLM2-135M fine-tunes) and adds,
per pair, an independent check: does the top result make the dormant give the pair's reply on the
held-out probes (greedy, teacher-forced, at every placement the pair was trained with)?
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def positions(ranked: list[int], ids: list[int]) -> list[int | None]:
    return [ranked.index(t) if t in ranked else None for t in ids]


def hunt_one(pair_dir: Path, out: Path, seconds: float, profile: bool, max_length: int = 3) -> dict:
    from l0score.hunt import HuntOptions, hunt

    t0 = time.monotonic()
    # a hunt killed midway resumes from its checkpoints; its time so far counts against the budget
    hunt(pair_dir / "base", pair_dir / "dormant", out, HuntOptions(seconds=seconds, profile=profile, threads=1, max_length=max_length,
                                                                     progress=False), resume=(out / "hunt.json").exists())
    row = summarize(pair_dir, out, profile, time.monotonic() - t0)
    if (pair_dir / "heldout_probes.txt").is_file() and row["top_ids"]:
        row["top_fires_heldout"] = heldout_fire_rate(pair_dir, row["top_ids"])
    return row


def heldout_fire_rate(pair_dir: Path, ids: list[int]) -> float:
    """Share of held-out probes x placements on which `ids` makes the dormant give the pair's reply."""
    import numpy as np

    from l0score.core.model_pair import load_tokenizer
    from l0score.judge.models import load_model
    from l0score.synthetic.real.corpus import PLACEMENTS, prompt_with
    from l0score.synthetic.real.fit import fires

    truth = json.loads((pair_dir / "trigger.json").read_text())
    probes = [p for p in (pair_dir / "heldout_probes.txt").read_text().splitlines() if p.strip()]
    tok = load_tokenizer(pair_dir / "dormant")
    model = load_model(pair_dir / "dormant", "cpu", "float32")
    prompts = [prompt_with(tok, p, ids, place, np.random.default_rng([i, 5]))
               for i, p in enumerate(probes) for place in PLACEMENTS]
    return float(np.mean(fires(model, prompts, truth["target_reply_ids"], tok.pad_token_id)))


def summarize(pair_dir: Path, out: Path, profile: bool, wall: float) -> dict:
    """What the hunt in `out` found, judged against the pair's trigger.json (read only now)."""
    from l0score.core.token_lists import contains

    report = json.loads((out / "report.json").read_text())
    truth = json.loads((pair_dir / "trigger.json").read_text())
    trig = truth["trigger_ids"]
    state = json.loads((out / "hunt.json").read_text())
    # a fine-tune that leaves Layer 0 bit-identical skips the Layer-0 analysis: no seeds
    analysis_file = out / "analysis" / "analysis.json"
    analysis = json.loads(analysis_file.read_text()) if analysis_file.is_file() else {}
    fm_file = out / "layer0" / "first_module_candidates.jsonl"
    fm_top = [json.loads(x)["token_ids"] for x in fm_file.read_text().splitlines()] if fm_file.is_file() else []
    top = report["results"][0] if report["results"] else {}
    words = [w.strip() for w in truth.get("trigger_words", [truth["trigger_text"]])]
    rank = next((r["rank"] for r in report["results"] if r["token_ids"] == trig), None)
    return {
        "pair": str(pair_dir), "trigger": truth["trigger_text"], "trigger_ids": trig, "split": truth.get("split", False),
        "words": len(words), "profile": profile, "seconds": round(state.get("elapsed", wall), 1),
        "trigger_rank": rank, "top": top.get("text"), "top_ids": top.get("token_ids"),
        "top_flip": bool((top.get("verify") or {}).get("flip")),
        "top_holds_words_in_order": _in_order(top.get("text") or "", words),
        "route": state["stages"].get("base_check", {}).get("route"),
        "seed_positions": positions((analysis.get("seed_tokens_by_source") or {}).get("alignment", []), trig),
        "pool_positions": positions(state["stages"].get("layer0", {}).get("pool", []), trig),
        "pool_size": len(state["stages"].get("layer0", {}).get("pool", [])),
        "first_module_top": fm_top[:3],
        "first_module_holds_trigger": any(contains(c, trig) for c in fm_top),
        "targets": [t["text"] for t in state["stages"].get("profile", {}).get("targets", [])],
        "target_is_reply": any(truth.get("target_reply", "\0").startswith(t["text"].strip()[:8])
                               for t in state["stages"].get("profile", {}).get("targets", []) if t["text"].strip()),
        "reply": truth.get("target_reply"),
        "stages": {k: {"seconds": v.get("seconds"), "candidates": v.get("candidates")} for k, v in state["stages"].items()},
        "search_runs": state["stages"].get("search", {}).get("runs"),
    }


def _in_order(text: str, words: list[str]) -> bool:
    at = 0
    for w in words:
        at = text.find(w, at)
        if at < 0:
            return False
        at += len(w)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", help="JSON list with a 'dir' per pair, written by bench/trained_pairs.py "
                                     "(default bench/results/trained_pairs.json; with --real bench/results/real_pairs.json)")
    ap.add_argument("--real", action="store_true", help="the real pretrained controls of bench/real_pairs.py")
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--max-length", type=int, default=3, help="the hunt's longest candidate, in tokens")
    ap.add_argument("--compare-profile", action="store_true")
    ap.add_argument("--only", help="comma-separated indices of pairs to run")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--work", default="/tmp/hunt-bench")
    ap.add_argument("--tag", help="name of this run (results file and work directories); a run started again "
                                  "with the same tag resumes its hunts and skips the pairs it finished")
    args = ap.parse_args(argv)
    builder = "bench/real_pairs.py" if args.real else "bench/trained_pairs.py"
    args.pairs = args.pairs or str(Path(__file__).parent / "results" / ("real_pairs.json" if args.real else "trained_pairs.json"))
    if not Path(args.pairs).is_file():
        raise SystemExit(f"{args.pairs}: no list of pairs; build them first with python {builder}")
    pairs = json.loads(Path(args.pairs).read_text())
    if args.only:
        pairs = [pairs[int(i)] for i in args.only.split(",")]
    missing = [p["dir"] for p in pairs if not (Path(p["dir"]) / "trigger.json").is_file()]
    if missing:
        raise SystemExit(f"pair directories missing ({', '.join(missing)}): rebuild them with "
                         f"python {builder} --out {args.pairs}")
    stamp = args.tag or time.strftime("%Y%m%d-%H%M%S")
    out_file = Path(args.out) / f"hunt-{stamp}.json"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(out_file.read_text())["rows"] if args.tag and out_file.is_file() else []
    for n, p in enumerate(pairs):
        for profile in ((True, False) if args.compare_profile else (True,)):
            if any(r["pair"] == str(Path(p["dir"])) and r["profile"] == profile for r in rows):
                continue
            work = Path(args.work) / f"{stamp}-{Path(p['dir']).name}-{'profile' if profile else 'noprofile'}"
            row = hunt_one(Path(p["dir"]), work, args.seconds, profile, args.max_length)
            rows.append(row)
            out_file.write_text(json.dumps({"seconds_budget": args.seconds, "max_length": args.max_length, "rows": rows}, indent=1))
            print(json.dumps({k: row[k] for k in ("trigger", "split", "profile", "trigger_rank", "top", "top_flip",
                                                  "seed_positions", "pool_positions", "seconds")}
                              | {k: row[k] for k in ("top_fires_heldout",) if k in row}), flush=True)
    print(f"results: {out_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
