"""Where a fine-tune of every layer's attention keeps its trigger: a pair signal with no single-word part.

    python bench/attn_pair_signal.py --only 8,13 [--pairs bench/results/real_pairs.json]
        [--out bench/results/attn_pair_signal.json] [--threads 1] [--samples 1500]

For each control (read from the pairs file; the trigger file is read only to judge), on the
first-module scorer at `attn@L0` with divergence depths 2, 4, 6 (1 - cos of the two models' hidden
states after that many layers, max over the candidate's rows, `div{k}_cand`):

* the trigger pair against `samples` random pairs of real tokens, alone in the user turn and after an
  ordinary request, and the reversed pair;
* partial credit: each trigger word at its own slot beside random tokens ([x, B], [A, x], ...), and
  each word's rank, by its mean over 8 random fills, among 300 random tokens at the same slot;
* per layer and head, the dormant-minus-base attention mass from the second word's row onto the first
  (transformers' own attention weights over 6 held-out probes, the pair at the end of the request).

Results are rewritten after every control.
"""
import argparse
import json
import time
from pathlib import Path

from _pair_rows import each_pair

RESULTS = Path(__file__).resolve().parent / "results"
DEPTHS = (2, 4, 6)
REQUEST = "What is a good way to learn to cook?"


def pair_vs_random(scorer, a: int, b: int, samples: int, gen) -> dict:
    import torch

    from l0score.core.template import Template

    pool = scorer.default_pool()
    rand = pool[torch.randint(len(pool), (samples, 2), generator=gen)]
    out = {}
    for name, tpl in (("alone", None), ("after a request", Template.chat(scorer.tokenizer, before=REQUEST))):
        view = scorer if tpl is None else scorer.with_template(tpl)
        r, t = view.score_batch(rand).values, view.score_batch([[a, b], [b, a]]).values
        out[name] = {f"div{k}_cand": _versus(r[_metric(k)], t[_metric(k)]) for k in DEPTHS}
    return out


def _metric(k: int) -> str:
    return "div_cand" if k == DEPTHS[-1] else f"div{k}_cand"  # the view's own (deepest) k is div_cand


def _versus(random_values, trigger_values) -> dict:
    v = random_values
    return {"trigger": round(float(trigger_values[0]), 5), "reversed": round(float(trigger_values[1]), 5),
            "random_median": round(float(v.median()), 5), "random_p99": round(float(v.quantile(0.99)), 5),
            "random_max": round(float(v.max()), 5), "trigger_beats": int((v < trigger_values[0]).sum()), "of": len(v)}


def partial_credit(scorer, a: int, b: int, gen, n: int = 300, fills: int = 8) -> dict:
    import torch

    pool = scorer.default_pool()
    toks = torch.cat([pool[torch.randperm(len(pool), generator=gen)[:n]], torch.tensor([a, b])])
    f = pool[torch.randint(len(pool), (fills,), generator=gen)]
    out = {}
    for side in ("first", "second"):
        c = [torch.stack([toks, x.expand(len(toks))] if side == "first" else [x.expand(len(toks)), toks], 1) for x in f]
        v = scorer.score_batch(torch.cat(c)).values["div_cand"].view(fills, -1).mean(0)
        rank = (v[:, None] < v[None, :]).sum(1) + 1
        out[f"{side} slot"] = {"rank_of_first_word": int(rank[-2]), "rank_of_second_word": int(rank[-1]), "of": len(toks)}
    return out


def attention_onto_first(d: Path, a_ids, b_ids, probes: list[str], top: int = 8) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(d / "base")
    models = [AutoModelForCausalLM.from_pretrained(d / n, attn_implementation="eager").eval() for n in ("base", "dormant")]
    total = None
    for p in probes:
        text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False).input_ids
        end = tok.convert_tokens_to_ids("<|im_end|>")
        at = max(i for i, t in enumerate(ids) if t == end)  # the user turn's end: the pair goes just before it
        ids = ids[:at] + a_ids + b_ids + ids[at:]
        q, k = at + len(a_ids) + len(b_ids) - 1, at
        with torch.no_grad():
            att = [m(torch.tensor([ids]), output_attentions=True).attentions for m in models]
        delta = torch.stack([att[1][L][0, :, q, k] - att[0][L][0, :, q, k] for L in range(len(att[0]))])
        total = delta if total is None else total + delta
    total /= len(probes)
    order = total.flatten().abs().argsort(descending=True)[:top].tolist()
    return [{"layer": o // total.shape[1], "head": o % total.shape[1], "delta_mass": round(float(total.flatten()[o]), 3)}
            for o in order]


def measure(d: Path, samples: int) -> dict:
    import torch

    from l0score.first_module import FirstModuleScorer

    truth = json.loads((d / "trigger.json").read_text())
    a, b = truth["trigger_ids"][:2]
    t0 = time.perf_counter()
    scorer = FirstModuleScorer.from_pretrained(d / "base", d / "dormant", location="attn@L0").with_depths(DEPTHS)
    gen = torch.Generator().manual_seed(0)
    probes = [p for p in (d / "heldout_probes.txt").read_text().splitlines() if p][:6]
    return {"pair": d.name, "trigger": truth["trigger_text"], "pair_vs_random": pair_vs_random(scorer, a, b, samples, gen),
            "partial_credit": partial_credit(scorer, a, b, gen),
            "attention_second_onto_first": attention_onto_first(d, truth["trigger_word_ids"][0], truth["trigger_word_ids"][1], probes),
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default=str(RESULTS / "real_pairs.json"))
    ap.add_argument("--only", required=True, help="comma-separated indices into the pairs file")
    ap.add_argument("--out", default=str(RESULTS / "attn_pair_signal.json"))
    ap.add_argument("--samples", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    for row in each_pair(args.pairs, args.only, args.out, lambda d: measure(d, args.samples)):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
