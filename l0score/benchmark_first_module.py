"""`l0score bench --first-module`: the first-changed-module scorer against the full-model objective on
the same candidates, side by side in one run, and the vocabulary sweep's rate.

Measured on one pair (a real control): candidates/s of `FirstModuleScorer` (trunk + changed module,
k = 0, and with the divergence k layers on) and of `FullModelScorer` with its defaults (3 probes x 2
placements, KV cache of the prompt prefix) and with one context (the same prompt count as the
first-module scorer: one placement per candidate), on the same random candidates; the sweep's
tokens/s over a slice of the vocabulary. At an attention location also the scorer on backend "native"
and layer L's attention path alone on torch and native. Timings take the best of ``repeats`` runs
after a warm-up.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch


@dataclass
class FirstModuleBenchOptions:
    """location: the first changed module ("mlp@L0"; from the base check when None);
    n_first / n_full: candidates timed per scorer [512, 64]; length: candidate tokens [3];
    k: divergence depth also timed (0 = skip) [2]; sweep_tokens: vocabulary slice timed [4096];
    batch_size [128]; repeats [2]; threads: torch threads [1]"""

    base: str
    dormant: str
    location: str | None = None
    n_first: int = 512
    n_full: int = 64
    length: int = 3
    k: int = 2
    sweep_tokens: int = 4096
    batch_size: int = 128
    repeats: int = 2
    threads: int = 1
    seed: int = 0
    out_dir: Path | None = None
    command: str = ""


@dataclass
class FirstModuleBenchResult:
    location: str
    rates: dict = field(default_factory=dict)  # name -> candidates (or tokens) per second
    speedup: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)


def _best_rate(fn, n: int, repeats: int) -> float:
    fn()  # warm-up: caches of the prompt prefix, allocator
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def resolve_location(base, dormant) -> str:
    """The first changed module from the base check (the hunt's own route)."""
    from .analysis.base_check import BaseCheckOptions, base_check
    from .first_module import Location

    found = base_check(dormant, [base], BaseCheckOptions())
    if found.first_changed is None:
        raise ValueError(f"{dormant} is identical to {base}: there is no first changed module to score")
    return Location.from_first_changed(found.first_changed).name


def run_first_module_bench(o: FirstModuleBenchOptions, progress=None) -> FirstModuleBenchResult:
    from .first_module import FirstModuleScorer, FirstModuleOptions
    from .first_module.sweep import SweepOptions, sweep
    from .judge.fullmodel import FullModelOptions, FullModelScorer

    say = progress or (lambda msg: None)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(o.threads)
    try:
        location = o.location or resolve_location(o.base, o.dormant)
        first = FirstModuleScorer(o.base, o.dormant, FirstModuleOptions(location=location, batch_size=o.batch_size,
                                                                       device="cpu"))
        models = (first.models["base"], first.models["dormant"])
        pool = first.default_pool().numpy()
        cands = np.random.default_rng(o.seed).choice(pool, size=(max(o.n_first, o.n_full), o.length))
        res = FirstModuleBenchResult(location, options={k: str(v) if isinstance(v, Path) else v
                                                         for k, v in asdict(o).items()})
        say(f"first-module scorer ({location}) on {o.n_first} candidates")
        res.rates["first_module"] = _best_rate(lambda: first.score_batch(cands[:o.n_first]), o.n_first, o.repeats)
        if location.startswith("attn"):
            _attention_rates(res, first, models, cands[:o.n_first], o)
        if o.k:
            deep = FirstModuleScorer(o.base, o.dormant, FirstModuleOptions(location=location, k=o.k, device="cpu",
                                                                          batch_size=o.batch_size), models=models)
            res.rates[f"first_module_k{o.k}"] = _best_rate(lambda: deep.score_batch(cands[:o.n_first]), o.n_first, o.repeats)
        for name, opts in (("full_model", FullModelOptions(device="cpu")),
                           ("full_model_one_context", FullModelOptions(device="cpu", probes=("What is 7 plus 5?",),
                                                                       positions=("before",)))):
            say(f"{name} on {o.n_full} candidates")
            full = FullModelScorer(o.base, o.dormant, opts)
            res.rates[name] = _best_rate(lambda: full.score_batch(cands[:o.n_full]), o.n_full, o.repeats)
            del full
        say(f"sweep over {o.sweep_tokens} vocabulary tokens")
        tokens = tuple(int(t) for t in pool[:o.sweep_tokens])
        res.rates["sweep_tokens"] = _best_rate(lambda: sweep(first, SweepOptions(depths=(), pool=tokens,
                                                                                 batch_size=o.batch_size * 2)),
                                               len(tokens), 1)
        res.speedup.update({name: res.rates["first_module"] / res.rates[name]
                            for name in ("full_model", "full_model_one_context")})
    finally:
        torch.set_num_threads(saved_threads)
    if o.out_dir is not None:
        write(res, o.out_dir)
    return res


def _attention_rates(res: FirstModuleBenchResult, first, models, cands, o: FirstModuleBenchOptions) -> None:
    """An attention location on backend native too: the whole scorer, and layer L's attention path alone
    (one batch of the same trunk states) on torch and native side by side."""
    from .backends.layer_rows import native_available
    from .first_module import FirstModuleOptions, FirstModuleScorer

    if not native_available():
        return
    native = FirstModuleScorer(o.base, o.dormant, FirstModuleOptions(location=first.kind, batch_size=o.batch_size,
                                                                    device="cpu", backend="native"), models=models)
    res.rates["first_module_native"] = _best_rate(lambda: native.score_batch(cands), len(cands), o.repeats)
    t = first.template
    batch = torch.as_tensor(cands[:o.batch_size])
    dep = torch.cat([batch, torch.tensor(t.suffix_ids, dtype=torch.long).expand(len(batch), -1)], 1)
    hidden = first.trunk.run(dep, len(t.prefix_ids), first._prefix(t)["trunk"])
    for name, scorer in (("attn_layer_torch", first), ("attn_layer_native", native)):
        pre = scorer._prefix(t)["attn"]
        res.rates[name] = _best_rate(lambda: scorer.attention.run(hidden, o.length, pre), len(batch), o.repeats)
    res.speedup["attn_layer_native/torch"] = res.rates["attn_layer_native"] / res.rates["attn_layer_torch"]


def write(res: FirstModuleBenchResult, out_dir) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out / f"first_module_{stamp}.json"
    path.write_text(json.dumps(asdict(res), indent=2))
    (out / f"first_module_{stamp}.md").write_text(markdown(res))
    return path


def markdown(res: FirstModuleBenchResult) -> str:
    lines = [f"# First-module scorer vs full models ({res.location})", "", f"command: `{res.options.get('command')}`", "",
             "| what | rate |", "|---|---|"]
    for name, rate in res.rates.items():
        unit = "tokens/s" if name.startswith("sweep") else "candidates/s"
        lines.append(f"| {name} | {rate:,.1f} {unit} |")
    lines += ["", *[f"- first-module / {k}: {v:.1f}x" if "/" not in k else f"- {k}: {v:.1f}x"
                    for k, v in res.speedup.items()]]
    return "\n".join(lines) + "\n"
