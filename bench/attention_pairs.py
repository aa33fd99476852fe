"""Where the attention-pair scan (search/attention_pairs.py) puts a real control's trigger: the pair's
rank among the scan's pairs, and each word's rank in every layer of the sweep's reading that the grids
take it from (z at the layer's best head; all tokens counted, where the grids leave out those that are
not whole text). The trigger file is read only afterwards, to place the pair.

    python bench/attention_pairs.py PAIR_DIR [PAIR_DIR ...] [--fills 2] [--firsts 32] [--seconds 256] [--layers 5]

One torch thread. Appends a row per pair to bench/results/attention_pairs.json.
"""
import argparse
import json
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "attention_pairs.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", nargs="+")
    ap.add_argument("--fills", type=int, default=2)
    ap.add_argument("--firsts", type=int, default=32)
    ap.add_argument("--seconds", type=int, default=256)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dump", help="also save the sweep's readings here (torch.save), for offline study")
    args = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from l0score.core.model_pair import ModelPair
    from l0score.core.template import Template
    from l0score.search.attention_pairs import AttentionPairsOptions, attention_pairs

    torch.set_num_threads(1)
    for d in map(Path, args.pairs):
        truth = json.loads((d / "trigger.json").read_text())
        tok = AutoTokenizer.from_pretrained(d / "base")
        models = {n: AutoModelForCausalLM.from_pretrained(d / n).eval() for n in ("base", "dormant")}
        pool = ModelPair.load(d / "base", d / "dormant").real_token_ids().tolist()
        prefix = list(Template.chat(tok, before="", after="").prefix_ids)
        opts = AttentionPairsOptions(layers=args.layers, fills=args.fills, firsts=args.firsts, seconds=args.seconds,
                                     seed=args.seed)
        t0 = time.perf_counter()
        res = attention_pairs(models, tok, prefix, pool, opts)
        seconds = time.perf_counter() - t0
        if args.dump:
            torch.save({"pool": res.sweep.pool, "into": res.sweep.into, "out_of": res.sweep.out_of,
                        "fills": res.fills}, args.dump.replace("{pair}", d.name))
        trig = truth["trigger_ids"]
        rank = res.pairs.index(trig) + 1 if trig in res.pairs else None
        words = {}
        s = res.sweep
        for side, x, t in (("into", s.into, trig[0]), ("out_of", s.out_of, trig[-1])):
            z = ((x - x.mean(0)) / x.std(0)).amax(-1)  # a layer's best head, as the grids take it
            i = s.pool.tolist().index(t)
            words[f"{tok.decode([t])} ({side})"] = ((z > z[i]).sum(0) + 1).tolist()
        row = {"pair": d.name, "dir": str(d), "trigger": truth["trigger_text"], "options": vars(args) | {"pairs": None},
               "pair_rank": rank, "of_kept": len(res.pairs), "crossed": res.crossed,
               "rank_by_layer": words, "top": [tok.decode(p) for p in res.pairs[:10]],
               "fills": [tok.decode(list(f)) for f in res.fills], "seconds": res.seconds | {"total": round(seconds, 1)},
               "date": time.strftime("%Y-%m-%d")}
        print(json.dumps(row), flush=True)
        rows = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
        RESULTS.write_text(json.dumps(rows + [row], indent=1))


if __name__ == "__main__":
    main()
