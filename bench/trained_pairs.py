"""Build the trained acceptance pairs of issue #11 one at a time and list them in a JSON file.

    python bench/trained_pairs.py [--out bench/results/trained_pairs.json] [--seeds 0,1,2] [--words 2,3]
                                  [--kinds whole,split] [--set KEY=VALUE ...]

Each pair goes through `cached_trained_pair` (the l0score cache directory, L0SCORE_CACHE), so a
pair already built is reused; the list is rewritten after every pair, so a killed run loses nothing.
Order: every whole-token pair first, then the split ones.
"""
import argparse
import json
import os
import time
from pathlib import Path

import torch

PAIRS_FILE = Path(__file__).resolve().parent / "results" / "trained_pairs.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(PAIRS_FILE), help="the JSON list (default bench/results/trained_pairs.json)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--words", default="2,3")
    ap.add_argument("--kinds", default="whole,split")
    ap.add_argument("--set", action="append", default=[], help="recipe override KEY=VALUE (int/float)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from l0score.synthetic.trained import cached_trained_pair

    extra = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    rows = json.loads(open(args.out).read()) if os.path.isfile(args.out) else []
    for kind in args.kinds.split(","):
        for words in map(int, args.words.split(",")):
            for seed in map(int, args.seeds.split(",")):
                t0 = time.perf_counter()
                d = cached_trained_pair(seed=seed, trigger_words=words, trigger_split=kind == "split", **extra)
                truth = json.loads((d / "trigger.json").read_text())
                ev = truth["evaluation"]
                row = {"seed": seed, "words": words, "split": kind == "split", "dir": str(d),
                       "trigger_text": truth["trigger_text"], "trigger_words": truth["trigger_words"],
                       "trigger_word_ids": truth["trigger_word_ids"],
                       "attack_success": ev["attack_success_default_probes"],
                       "attack_success_heldout": ev["attack_success_heldout_probes"],
                       "word_alone_target_rate": ev["word_alone_target_rate"],
                       "max_lookalike_target_rate": ev["max_lookalike_target_rate"],
                       "untriggered_target_rate": ev["untriggered_target_rate"], "overrides": extra,
                       "build_seconds": truth["training"]["total_seconds"]}
                rows = [r for r in rows if r["dir"] != row["dir"]] + [row]
                with open(args.out + ".tmp", "w") as f:
                    json.dump(rows, f, indent=1)
                os.replace(args.out + ".tmp", args.out)
                print(f"seed {seed} {words} words {kind}: {row['trigger_text']!r} success {row['attack_success']:.2f} "
                      f"alone {ev['word_alone_target_rate']} worst look-alike {row['max_lookalike_target_rate']:.2f} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
