"""Does weight amplification give an every-layer attention trigger's first word a single-token signal?

    python bench/attn_amplified_sweep.py --only 8 [--alpha 3] [--fills 2] [--pairs bench/results/real_pairs.json]
        [--out bench/results/attn_amplified_sweep.json] [--threads 1]

The dormant amplified in its weights, W_base + alpha (W_dormant - W_base) (written once to a temporary
directory under the cache directory), against the base on the first-module scorer at `attn@L0`: every
allowed token t of the vocabulary at the first slot of [t, f] for `fills` random tokens f (the same
fills for every t), ranked by the mean of 1 - cos of the two models' hidden states 4 layers on, max
over the candidate's rows. The trigger file is read only to say where the trigger's words rank.
Results are rewritten after every control. About 11 minutes per control at 2 fills, one thread.
"""
import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from _pair_rows import each_pair

RESULTS = Path(__file__).resolve().parent / "results"


def amplified_copy(d: Path, alpha: float, into: Path) -> Path:
    from safetensors.torch import load_file, save_file

    out = into / "dormant"
    shutil.copytree(d / "dormant", out)
    for fb, fd in zip(sorted((d / "base").glob("*.safetensors")), sorted((d / "dormant").glob("*.safetensors"))):
        wb, wd = load_file(fb), load_file(fd)
        save_file({k: (wb[k] + alpha * (wd[k] - wb[k])).contiguous() for k in wd}, out / fd.name, metadata={"format": "pt"})
    return out


def first_slot_sweep(scorer, fills: int, batch: int = 512):
    import torch

    pool = scorer.default_pool()
    f = pool[torch.randint(len(pool), (fills,), generator=torch.Generator().manual_seed(0))]
    values = torch.zeros(len(pool))
    for i in range(0, len(pool), batch):
        t = pool[i:i + batch]
        c = torch.cat([torch.stack([t, x.expand(len(t))], 1) for x in f])
        values[i:i + batch] = scorer.score_batch(c).values["div_cand"].view(fills, -1).mean(0)
    return pool, values


def measure(d: Path, alpha: float, fills: int) -> dict:
    from l0score.core.cache_dir import cache_dir
    from l0score.first_module import FirstModuleScorer

    truth = json.loads((d / "trigger.json").read_text())
    t0 = time.perf_counter()
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".amplified-") as tmp:
        scorer = FirstModuleScorer.from_pretrained(d / "base", amplified_copy(d, alpha, Path(tmp)),
                                                   location="attn@L0").with_depths((4,))
        pool, values = first_slot_sweep(scorer, fills)
    order = values.argsort(descending=True).tolist()
    rank = {int(pool[j]): r + 1 for r, j in enumerate(order)}
    tok = scorer.tokenizer
    return {"pair": d.name, "trigger": truth["trigger_text"], "alpha": alpha, "fills": fills,
            "word_ranks": {tok.decode(w): rank.get(w[0]) for w in truth["trigger_word_ids"]}, "of": len(pool),
            "top": tok.batch_decode([[int(pool[j])] for j in order[:40]]), "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default=str(RESULTS / "real_pairs.json"))
    ap.add_argument("--only", required=True, help="comma-separated indices into the pairs file")
    ap.add_argument("--alpha", type=float, default=3.0)
    ap.add_argument("--fills", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "attn_amplified_sweep.json"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    key = lambda row: (row["pair"], row["alpha"], row["fills"])  # noqa: E731
    for row in each_pair(args.pairs, args.only, args.out, lambda d: measure(d, args.alpha, args.fills), key):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
