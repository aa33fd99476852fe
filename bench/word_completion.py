"""Word completion on the real base (SmolLM2-135M-Instruct): how many of the control list's split
words the base grows back from their pieces, and at what cost.

    python bench/word_completion.py [--out bench/results/word_completion.json] [--threads 1]

Every word of l0score.synthetic.real.words.WORDS that the vocabulary cuts into 2-4 pieces, three ways:
its first piece alone in a pool of 20 whole-word starts (the hunt's case when the sweep pooled only the
start); the same with the word's second piece pooled too (a 3-4 piece word; the sweep pooled a middle
piece); and every split word's first piece in one pool, grown together (the cost). A word counts when
the grown word equals the tokenizer's pieces of " word". The trigger file of no control is read.
"""
import argparse
import json
import random
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(RESULTS / "word_completion.json"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from l0score.core.template import Template
    from l0score.search.word_completion import WordCompletionOptions, word_completion
    from l0score.synthetic.real import cached_real_base
    from l0score.synthetic.real.words import WORDS, word_ids

    base = cached_real_base()
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    prefix = list(Template.chat(tok, before="", after="").prefix_ids)
    split = [w for w in WORDS if 2 <= len(word_ids(tok, w)) <= 4]
    whole = [word_ids(tok, w)[0] for w in WORDS if len(word_ids(tok, w)) == 1]
    rng = random.Random(args.seed)
    opts = WordCompletionOptions()
    rows = []
    for w in split:
        ids = word_ids(tok, w)
        fill = rng.sample(whole, 20)
        alone = word_completion(model, tok, prefix, fill[:12] + [ids[0]] + fill[12:], opts)
        middle = word_completion(model, tok, prefix, fill[:12] + [ids[0]] + fill[12:] + ids[1:2], opts) if len(ids) > 2 else None
        rows.append({"word": w, "pieces": tok.convert_ids_to_tokens(ids), "start_alone": ids in alone.words,
                     "with_second_piece": None if middle is None else ids in middle.words,
                     "grown_from_start": [g["text"] for g in alone.grown if g["start"] == ids[0]]})
    pool = list(dict.fromkeys(word_ids(tok, w)[0] for w in split))
    t0 = time.perf_counter()
    together = word_completion(model, tok, prefix, pool, WordCompletionOptions(starts=len(pool)))
    seconds = time.perf_counter() - t0
    summary = {"split_words": len(split), "grown_from_start_alone": sum(r["start_alone"] for r in rows),
               "three_or_four_pieces": sum(r["with_second_piece"] is not None for r in rows),
               "grown_with_second_piece": sum(bool(r["with_second_piece"]) for r in rows),
               "together": {"starts": len(pool), "grown": len(together.grown), "forwards": together.forwards,
                            "seconds": round(seconds, 2), "threads": args.threads,
                            "recovered": sum(word_ids(tok, w) in together.words for w in split)}}
    Path(args.out).write_text(json.dumps({"summary": summary, "options": vars(opts), "rows": rows}, indent=1) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
