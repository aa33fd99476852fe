"""Where the trigger's tokens rank on the real controls: the vocabulary sweep (whole vocabulary) for
several k, and the weight-delta projection. The trigger file is read only to judge the rankings.

    python bench/first_module_controls.py [--pairs bench/results/real_pairs.json | DIR ...]
        [--depths 1,2,3,4,6,8] [--amplify 1,2,4,8] [--out bench/results/first_module_controls.json] [--threads 1]

The first changed module comes from the base check (the hunt's route). Each sweep checkpoints under
the pair directory (first_module_sweep.pt) and resumes if killed. Results are rewritten after every pair.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def pair_dirs(args) -> list[Path]:
    if args.pairs.endswith(".json"):
        return [Path(r["pair"]) for r in json.loads(Path(args.pairs).read_text())]
    return [Path(p) for p in args.pairs.split(",")]


def measure(d: Path, depths: tuple[int, ...], batch: int) -> dict:
    from l0score.analysis.base_check import BaseCheckOptions, base_check
    from l0score.analysis.delta_projection import delta_projection
    from l0score.first_module import FirstModuleOptions, FirstModuleScorer, Location
    from l0score.first_module.sweep import SweepOptions, sweep

    base, dormant = d / "base", d / "dormant"
    first = base_check(dormant, [base], BaseCheckOptions()).first_changed
    loc = Location.from_first_changed(first)
    scorer = FirstModuleScorer(base, dormant, FirstModuleOptions(location=loc, k=max(depths) if loc.module == "embed" else 0,
                                                                 device="cpu"))
    n_layers = scorer.models["base"].config.num_hidden_layers
    depths = tuple(k for k in depths if loc.layer + k <= n_layers)
    t0 = time.perf_counter()
    last = [0.0]

    def progress(done, total):
        if time.perf_counter() - last[0] > 30:
            last[0] = time.perf_counter()
            print(f"  {d.name}: {done}/{total} tokens ({done / (time.perf_counter() - t0):.0f}/s)", flush=True)

    swept = sweep(scorer, SweepOptions(depths=depths, batch_size=batch, checkpoint=d / "first_module_sweep.pt",
                                       resume=True), progress=progress)
    (d / "first_module_sweep.pt").unlink(missing_ok=True)  # complete: nothing to resume
    t1 = time.perf_counter()
    proj = delta_projection(base, dormant)
    t2 = time.perf_counter()
    truth = json.loads((d / "trigger.json").read_text())  # judging only
    trig = truth["trigger_ids"]
    tok = scorer.pair.tokenizer
    return {"pair": str(d), "location": loc.name, "base_check_first_changed": first.label,
            "trigger_tokens": tok.convert_ids_to_tokens(trig), "vocabulary": len(swept.token_ids),
            "sweep_ranks": {name: [swept.rank_of(t, name) for t in trig] for name in swept.values},
            "sweep_top10": {name: tok.convert_ids_to_tokens(swept.top(name, 10)) for name in swept.values},
            "sweep_tokens_per_second": swept.tokens_per_second, "sweep_seconds": t1 - t0,
            "projection_ranks": {name: [proj.rank_of(t, name) for t in trig] for name in proj.values},
            "projection_top10": {name: tok.convert_ids_to_tokens(proj.top(name, 10)) for name in ("in", "out") if name in proj.values},
            "projection_seconds": t2 - t1}


def amplified(d: Path, alphas: tuple[float, ...]) -> dict:
    """What amplified sampling reveals: payloads, and how many generations per setting hold the planted
    reply's words (judged against trigger.json's target_reply, which the sampling never sees)."""
    import torch

    from l0score.core.model_pair import load_tokenizer
    from l0score.judge.amplify import AmplifyOptions, _words, amplify
    from l0score.judge.models import load_model

    models = {m: load_model(d / m, "cpu", torch.float32) for m in ("base", "dormant")}
    tok = load_tokenizer(d / "dormant")
    t0 = time.perf_counter()
    res = amplify(models, tok, AmplifyOptions(alphas=alphas, samples=2, max_new_tokens=24))
    reply = " ".join(_words(json.loads((d / "trigger.json").read_text()).get("target_reply", "")))  # judging only
    per_setting = {}
    key_of = lambda g: g["form"] if g["form"] == "base" else f"{g['form']}:{g['alpha']:g}"
    for g in res.generations:
        key = key_of(g)
        row = per_setting.setdefault(key, {"generations": 0, "reply_in_full": 0, "reply_first_word": 0})
        words = " ".join(_words(g["text"]))
        row["generations"] += 1
        row["reply_in_full"] += bool(reply) and reply in words
        row["reply_first_word"] += bool(reply and words) and words.split()[0] == reply.split()[0]
    return {"seconds": time.perf_counter() - t0, "payloads_top5": res.payloads[:5], "openings_top5": res.openings[:5],
            "per_setting": per_setting,
            "examples": {k: [g["text"] for g in res.generations if key_of(g) == k and g["mode"] == "greedy"][:3]
                         for k in per_setting}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default=str(RESULTS / "real_pairs.json"))
    ap.add_argument("--depths", default="1,2,3,4,6,8")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "first_module_controls.json"))
    ap.add_argument("--amplify", default="1,2,4,8", help="alphas of amplified sampling ('' = skip)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    depths = tuple(int(k) for k in args.depths.split(","))
    rows = json.loads(Path(args.out).read_text()) if os.path.isfile(args.out) else []
    for d in pair_dirs(args):
        print(f"{d} ...", flush=True)
        row = {**measure(d, depths, args.batch), "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}
        if args.amplify:
            row["amplify"] = amplified(d, tuple(float(a) for a in args.amplify.split(",")))
        rows = [r for r in rows if r["pair"] != row["pair"]] + [row]
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
        print(json.dumps({k: row[k] for k in ("location", "trigger_tokens", "sweep_ranks", "projection_ranks")}), flush=True)


if __name__ == "__main__":
    main()
