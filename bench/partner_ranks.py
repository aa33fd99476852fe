"""Where a two-word trigger's words rank as each other's partners over the whole vocabulary, by the
two models' divergence k layers past Layer 0's attention (first_module/partners.py, the measure of
search/partner_scan.py): the second word's left partners and the first word's right partners.

    python bench/partner_ranks.py PAIR_DIR " purple honey" [--depths 1,2] [--threads 1]

PAIR_DIR holds base/ and dormant/ (a real control of bench/real_pairs.py). Prints one line per side
and depth; the figures of docs/search.md ("Partner scan") and docs/first-module.md came from it.
"""
import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pair")
    ap.add_argument("trigger", help="two words, e.g. ' purple honey' (each one token)")
    ap.add_argument("--depths", default="1,2")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    from l0score.first_module import FirstModuleOptions, FirstModuleScorer
    from l0score.first_module.partners import PartnerOptions, partner_sweep

    torch.set_num_threads(args.threads)
    depths = tuple(int(k) for k in args.depths.split(","))
    scorer = FirstModuleScorer(f"{args.pair}/base", f"{args.pair}/dormant",
                               FirstModuleOptions(location="attn@L0", device="cpu", batch_size=256))
    tok = scorer.tokenizer
    first, second = tok.encode(args.trigger, add_special_tokens=False)
    for side, anchor, partner in (("left", second, first), ("right", first, second)):
        t0 = time.perf_counter()
        r = partner_sweep(scorer, anchor, PartnerOptions(depths=depths, side=side, batch_size=256))
        dt = time.perf_counter() - t0
        print(f"{side} of {tok.decode([anchor])!r}: {len(r.token_ids)} partners in {dt:.0f} s", flush=True)
        for name in r.values:
            top = [tok.decode([int(t)]) for t in r.ranking(name)[:8]]
            print(f"  {name}: {tok.decode([partner])!r} {r.rank_of(partner, name)} of {len(r.token_ids)}; top {top}")


if __name__ == "__main__":
    main()
