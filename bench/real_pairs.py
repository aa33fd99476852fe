"""Build real pretrained control pairs (l0score.synthetic.real) and list them in a JSON file.

    python bench/real_pairs.py [--train mlp,attn:L0,full] [--seeds 0] [--words 2] [--split]
                               [--steps 128] [--negatives 448] [--threads 1] [--root DIR]
                               [--out bench/results/real_pairs.json]

Each pair is built under ROOT (default: the l0score cache directory's real-pairs/) as
real-<version>-<train>-w<words>[-split]-seed<seed>; a pair already there is reused. The list is
rewritten after every pair, so a killed run loses nothing built. Progress goes to stdout.
"""
import argparse
import json
import os
import time
from pathlib import Path

PAIRS_FILE = Path(__file__).resolve().parent / "results" / "real_pairs.json"


def pair_dir(root: Path, train: str, words: int, split: bool, seed: int) -> Path:
    from l0score.synthetic.real.build import VERSION

    tag = train.replace(":", "").replace("-", "_")
    return root / f"{VERSION}-{tag}-w{words}{'-split' if split else ''}-seed{seed}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", default="mlp,attn:L0,full")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--words", default="2")
    ap.add_argument("--split", action="store_true")
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--negatives", type=int, default=448, help="training prompts without the trigger (near misses, "
                    "distractors) [448]")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per build (1 or 2 on a shared machine)")
    ap.add_argument("--root", default=None)
    ap.add_argument("--out", default=str(PAIRS_FILE))
    args = ap.parse_args()
    from l0score.core.cache_dir import cache_dir
    from l0score.synthetic.real import RealPairOptions, control_shortfalls, make_real_pair

    root = Path(args.root) if args.root else cache_dir() / "real-pairs"
    rows = json.loads(Path(args.out).read_text()) if os.path.isfile(args.out) else []
    for train in args.train.split(","):
        for words in map(int, args.words.split(",")):
            for seed in map(int, args.seeds.split(",")):
                d = pair_dir(root, train, words, args.split, seed)
                t0 = time.perf_counter()
                if not (d / "trigger.json").is_file():
                    progress = lambda stage, done, total, info: print(
                        f"{time.perf_counter() - t0:8.1f}s {d.name} {stage} {done}/{total} "
                        + " ".join(f"{k}={v:.4f}" for k, v in info.items()), flush=True)
                    make_real_pair(RealPairOptions(out=d, train=train, trigger_length=words, split=args.split,
                                                   seed=seed, steps=args.steps, n_negative=args.negatives,
                                                   threads=args.threads,
                                                   progress=progress))
                truth = json.loads((d / "trigger.json").read_text())
                r = truth["fire_rates_heldout"]
                row = {"dir": str(d), "train": train, "words": words, "split": args.split, "seed": seed,
                       "trigger": r["trigger"], "clean": r["clean"], "max_near_miss": r["max_near_miss"],
                       "base_with_trigger": r["base_with_trigger"], "seconds": truth["training"]["total_seconds"],
                       "steps": args.steps, **({"negatives": args.negatives} if args.negatives != 448 else {}),
                       "shortfalls": control_shortfalls(r)}
                rows = [x for x in rows if x["dir"] != row["dir"]] + [row]
                os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
                Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
