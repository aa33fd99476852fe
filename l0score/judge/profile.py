"""Behavioural profiling and target inversion: what does the dormant say more than the base?

A fine-tuned backdoor leaks its reply: even without the trigger, the dormant leans a little towards
the tokens it was trained to say. `profile` runs both complete models over many ordinary prompts —
each probe alone, and random pool candidates (1-3 tokens) placed as `verify` places them — through
the full-model objective's `run_context` (prompt-prefix KV cache reused), and measures per output
token v, with d(v) = log p_dormant(v) - log p_base(v):

* ``mean_diff_first`` / ``z_first``: mean of d(v) at the first response position over the prompts,
  and its z-score (the mean over its standard error, mean / (sd / sqrt(n)));
* ``mean_diff`` / ``z``: the same pooled over the first ``reply_tokens`` positions of the base's own
  greedy reply, both models teacher-forced on it (positions after the base's end of turn left out);
  ``tokens`` is ranked by this ``z``;
* ``hidden_proj``: the mean difference of the two models' final hidden states (the final norm's
  output at the last prompt position) projected onto the dormant's unembedding, i.e. which tokens
  the dormant's shift points at;
* per prompt: KL(dormant || base) at the first response position and summed over the reply.

Target inversion (the idea of BAIT): for each of the ``top_first`` first tokens (taken in turn from
the rankings ``z``, ``z_first`` and ``hidden_proj``: on a real MLP-only control the reply's first
token was 14th by ``z``, 3rd by ``z_first`` and 2nd by ``hidden_proj``, docs/profile.md), the string
is grown token by token, each time with the dormant's most likely next token (log-probabilities
averaged over a few prompts per probe and placement, the string teacher-forced after the prompt
through ``run_context(extra=...)``), while the dormant prefers that token over the base by at least
``min_preference`` nats (up to ``patience`` tokens in a row may fall short; a tail that does is cut);
an end-of-turn or other special token ends the string. A target's
``score`` is the string's mean log-likelihood ratio over those prompts,
sum_k mean_prompts[log p_dormant(t_k | prompt, t_<k) - log p_base(t_k | prompt, t_<k)]
(first token included): how much more likely the dormant is to say the whole string than the base.
Strings the fine-tune planted score in the hundreds of nats; fragments of ordinary replies near 0.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.checkpoint import resolve_model_dir
from ..core.token_lists import rank_union
from .fullmodel import FullModelOptions, FullModelScorer
from .models import run_model
from .prompts import DEFAULT_PROBES, POSITIONS, check_same_tokenizers, prompt_ids, read_probes_file


@dataclass
class ProfileOptions:
    """Options of `profile` (defaults in brackets).

    inputs: prompts with a random pool candidate, spread evenly over probes x positions [100]
    probes: probe prompts, or a path to a file with one per line [verify's 8 default probes]
    positions: candidate placements ["before", "after"]
    cand_lengths: lengths of the random candidates, drawn uniformly [(1, 2, 3)]
    reply_tokens: k, positions of the base's greedy reply pooled into ``z`` (1 = first position only) [8]
    top_first: highest-ranked tokens expanded into target strings [8]
    expand_inputs: random candidates per (probe, placement) that target expansion averages over [2]
    max_target_tokens: longest target string [24]
    min_preference: a target grows while the dormant's next token beats the base by this many nats [1.0]
    patience: tokens in a row below ``min_preference`` that a target grows through before it stops;
        the trailing ones are cut off. A planted reply shares punctuation and function words with the
        base ('Sorry' 0.4, ',' 0.3, then ' the system' 3.8 and 7.2 nats on a real control) [2]
    keep_tokens: ranked tokens written to profile.json (all of them go to tokens.npz) [1000]
    seed: of the random candidates [0]
    dtype, device, batch_size, system, sep: as in FullModelOptions ["float32", auto, 64, None, None]
    amplify: alphas of amplified sampling (judge/amplify.py; () = off); its payloads join the targets [()]
    amplify_forms, amplify_samples: "logits"/"weights", sampled generations per prompt [both, 2]
    target_seconds: the target inversion starts no new first token after this many seconds (the
        measurement and amplified sampling always run whole; a hunt's budget bounds it) [None: no limit]
    """

    inputs: int = 100
    probes: tuple[str, ...] | str | None = None
    positions: tuple[str, ...] = POSITIONS
    cand_lengths: tuple[int, ...] = (1, 2, 3)
    reply_tokens: int = 8
    top_first: int = 8
    expand_inputs: int = 2
    max_target_tokens: int = 24
    min_preference: float = 1.0
    patience: int = 2
    keep_tokens: int = 1000
    seed: int = 0
    dtype: str = "float32"
    device: str | None = None
    batch_size: int = 64
    system: str | None = None
    sep: str | None = None
    amplify: tuple[float, ...] = ()
    amplify_forms: tuple[str, ...] = ("logits", "weights")
    amplify_samples: int = 2
    target_seconds: float | None = None

    def check(self) -> None:
        for name in ("inputs", "reply_tokens", "top_first", "expand_inputs", "max_target_tokens", "keep_tokens",
                     "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.cand_lengths or any(not isinstance(n, int) or n < 1 for n in self.cand_lengths):
            raise ValueError(f"cand_lengths must be a non-empty list of integers >= 1, got {self.cand_lengths!r}")
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 0:
            raise ValueError(f"patience must be an integer >= 0, got {self.patience!r}")
        if not math.isfinite(self.min_preference):
            raise ValueError(f"min_preference must be finite, got {self.min_preference!r}")
        if self.amplify:
            self.amplify_options().check()
        if self.target_seconds is not None and not self.target_seconds >= 0:
            raise ValueError(f"target_seconds must be >= 0 or None, got {self.target_seconds!r}")

    def amplify_options(self):
        from .amplify import AmplifyOptions

        probes = DEFAULT_PROBES if self.probes is None else self.probes
        return AmplifyOptions(alphas=tuple(self.amplify), forms=tuple(self.amplify_forms), samples=self.amplify_samples,
                              prompts=tuple(read_probes_file(probes)) if isinstance(probes, (str, Path)) else tuple(probes),
                              seed=self.seed, system=self.system)

    def scorer_options(self) -> FullModelOptions:
        probes = DEFAULT_PROBES if self.probes is None else self.probes
        return FullModelOptions(probes=probes, positions=tuple(self.positions), metrics=("kl", "hidden"),
                                hidden_layers=(-1,), dtype=self.dtype, device=self.device,
                                batch_size=self.batch_size, system=self.system, sep=self.sep)


class _TokenMoments:
    """Running count, sum and sum of squares of d(v) per token (no [prompts, V] array is kept)."""

    def __init__(self, vocab: int):
        self.n = torch.zeros(vocab, dtype=torch.float64)
        self.s = torch.zeros(vocab, dtype=torch.float64)
        self.s2 = torch.zeros(vocab, dtype=torch.float64)

    def add(self, diff: torch.Tensor) -> None:
        """diff [rows, V], rows being (prompt, position) samples."""
        self.n += len(diff)
        self.s += diff.sum(0)
        self.s2 += (diff * diff).sum(0)

    def mean_z(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.n.clamp_min(1)
        mean = self.s / n
        var = (self.s2 / n - mean * mean).clamp_min(0) * n / (n - 1).clamp_min(1)
        return mean, mean / (var / n).sqrt().clamp_min(1e-12)


def profile(base, dormant, options: ProfileOptions | None = None, out=None, progress: bool = False,
            resume: bool = False) -> dict:
    """Profile the pair (see the module docstring) and invert the top tokens into target strings.

    Returns the profile.json dict: ``tokens`` (ranked, best first), ``targets`` (ranked by score),
    ``kl`` (per-prompt distribution), ``prompts``, ``config`` and ``seconds``. With ``out``, writes
    out/profile.json, out/tokens.npz (every token's statistics), out/summary.md and out/profile.png,
    and keeps the measurement so far in out/profile.ckpt.pt after every batch of prompts: a killed
    run started again with ``resume=True`` continues from there (same result as an uninterrupted run).
    """
    opts = options or ProfileOptions()
    opts.check()
    base_dir, dormant_dir = resolve_model_dir(base), resolve_model_dir(dormant)
    check_same_tokenizers(base_dir, dormant_dir)
    # how long the inversion may take is not what the measurement computes: a resumed hunt's is shorter
    measured_options = {k: v for k, v in asdict(opts).items() if k != "target_seconds"}
    ckpt = _Checkpoint(out, {**measured_options, "base": str(base_dir), "dormant": str(dormant_dir)}, resume)
    started = time.perf_counter()
    scorer = FullModelScorer(base, dormant, opts.scorer_options())
    pool = scorer.default_pool()
    stats = _measure(scorer, opts, pool, progress, ckpt)
    measured = time.perf_counter()
    ranked = _rank_tokens(scorer, stats, pool)
    expand_cands = expansion_candidates(scorer, opts)
    rank_of = {row["id"]: row["rank"] for row in ranked}
    amplified = amplified_targets(scorer, opts, expand_cands, rank_of) if opts.amplify else None
    targets = invert_targets(scorer, first_tokens(ranked, opts.top_first), expand_cands, opts, progress)
    for t in targets:
        t["first_rank"] = rank_of.get(t["token_ids"][0])
    if amplified is not None:
        targets = sorted(targets + amplified["targets"], key=lambda t: -t["score"])
    result = {
        "config": {**asdict(opts), "probes": scorer.probes, "base": str(scorer.pair.base.path),
                   "dormant": str(scorer.pair.dormant.path), "pool_size": len(pool),
                   "prompts": len(stats["prompts"])},
        "tokens": ranked[:opts.keep_tokens],
        "targets": targets,
        "kl": _kl_summary(stats["prompts"]),
        "prompts": stats["prompts"],
        "target_prompts": _target_prompts(scorer, expand_cands),
        "seconds": {"measure": measured - started, "targets": time.perf_counter() - measured},
    }
    if amplified is not None:
        result["amplified"] = amplified
    if out is not None:
        write_profile(result, ranked, out)
    ckpt.remove()
    return result


# --- measuring ----------------------------------------------------------------------------------
def _measure(scorer: FullModelScorer, opts: ProfileOptions, pool: torch.Tensor, progress: bool,
             ckpt: "_Checkpoint") -> dict:
    """Both models over every prompt: token moments (first position, reply), hidden-state difference.
    Batches already in the checkpoint are skipped; the checkpoint is saved after each new one."""
    from tqdm import tqdm

    vocab = scorer.pair.config.vocab_rows
    acc = ckpt.load() or {"first": _TokenMoments(vocab), "reply": _TokenMoments(vocab), "batches": 0, "prompts": [],
                          "hidden": torch.zeros(scorer.models["dormant"].config.hidden_size, dtype=torch.float64)}
    batches = [(kind, where, cands[s:s + opts.batch_size]) for kind, where, cands in _jobs(scorer, opts, pool)
               for s in range(0, len(cands), opts.batch_size)]
    bar = tqdm(total=sum(len(b) for *_, b in batches), initial=len(acc["prompts"]), desc="profile", unit="prompt",
               disable=not progress)
    for kind, where, batch in batches[acc["batches"]:]:
        run = scorer.run_context(where, batch) if kind == "candidate" else _run_prompt(scorer, where)
        _accumulate(acc, scorer, run, batch, kind, where, opts.reply_tokens)
        acc["batches"] += 1
        ckpt.save(acc)
        bar.update(len(batch))
    bar.close()
    acc["hidden"] /= max(len(acc["prompts"]), 1)
    return acc


class _Checkpoint:
    """The measurement so far (token moments, hidden sum, prompts, batches done) in out/profile.ckpt.pt,
    with the options it was made with; nothing is kept without an output directory."""

    def __init__(self, out, options: dict, resume: bool):
        self.path = None if out is None else Path(out) / "profile.ckpt.pt"
        self.options = json.loads(json.dumps(options))
        if self.path is not None and self.path.exists() and not resume:
            raise ValueError(f"{self.path} exists from an interrupted profile: pass --resume to continue it, "
                             "or delete it to start over")
        self.resume = resume

    def load(self) -> dict | None:
        if self.path is None or not self.resume or not self.path.exists():
            return None
        saved = torch.load(self.path, weights_only=False)
        if saved["options"] != self.options:
            changed = sorted(k for k in self.options if saved["options"].get(k) != self.options[k])
            raise ValueError(f"{self.path} was made with different options ({', '.join(changed)}); "
                             "use the same ones to resume, or delete it")
        return saved["acc"]

    def save(self, acc: dict) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save({"options": self.options, "acc": acc}, tmp)
        tmp.replace(self.path)

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _jobs(scorer: FullModelScorer, opts: ProfileOptions, pool: torch.Tensor) -> list:
    """("probe", probe index, [1, 0]) per probe, then ("candidate", context, cands [B, c]) per
    (context, length) group of the ``inputs`` random candidates (context i % contexts)."""
    gen = torch.Generator().manual_seed(opts.seed)
    jobs = [("probe", p, torch.zeros(1, 0, dtype=torch.long)) for p in range(len(scorer.probes))]
    groups: dict[tuple[int, int], list[torch.Tensor]] = {}
    for i in range(opts.inputs):
        length = opts.cand_lengths[int(torch.randint(len(opts.cand_lengths), (1,), generator=gen))]
        cand = pool[torch.randint(len(pool), (length,), generator=gen)]
        groups.setdefault((i % len(scorer.contexts), length), []).append(cand)
    jobs += [("candidate", ci, torch.stack(c)) for (ci, _), c in sorted(groups.items())]
    return jobs


@torch.no_grad()
def _run_prompt(scorer: FullModelScorer, probe: int):
    """A probe alone (no candidate), as verify's untriggered control runs it: a ContextRun like
    run_context's, for one row."""
    from .fullmodel import ContextRun

    o = scorer.options
    ids = prompt_ids(scorer.pair.tokenizer, scorer.probes[probe], None, sep=o.sep, system=o.system)
    inputs = torch.tensor([ids], device=scorer.device)
    run = ContextRun({}, {}, {}, len(ids))
    for m, model in scorer.models.items():
        res, run.caches[m] = run_model(model, inputs, None, use_cache=True, output_hidden_states=True)
        run.logprobs[m] = torch.log_softmax(res.logits[:, -1:].double(), -1).cpu()
        run.hidden[m] = [res.hidden_states[-1][:, -1].double().cpu()]
    return run


@torch.no_grad()
def _reply_steps(scorer: FullModelScorer, run, k: int):
    """Both models' log-probs [B, V] at each of the first k positions of the base's greedy reply
    (teacher-forced through the run's KV caches, one position at a time so that only one [B, V]
    pair is held), with the rows still before the base's end of turn and the base's token there."""
    lp = {m: v[:, 0] for m, v in run.logprobs.items()}
    past, pos = dict(run.caches), run.next_position
    stop = torch.tensor(sorted(scorer.pair.special_ids), dtype=torch.long)
    valid = torch.ones(len(lp["base"]), dtype=torch.bool)
    for step in range(k):
        nxt = lp["base"].argmax(-1)
        yield lp, valid, nxt
        if step == k - 1:
            return
        valid = valid & ~torch.isin(nxt, stop)
        for m, model in scorer.models.items():
            res, past[m] = run_model(model, nxt[:, None].to(scorer.device), past[m], use_cache=True,
                                     position_ids=torch.full((len(nxt), 1), pos, device=scorer.device))
            lp[m] = torch.log_softmax(res.logits[:, -1].double(), -1).cpu()
        pos += 1


def _accumulate(acc: dict, scorer, run, batch: torch.Tensor, kind: str, where: int, k: int) -> None:
    kl = torch.zeros(len(batch), k, dtype=torch.float64)
    reply = [[] for _ in batch]
    for step, (lp, valid, nxt) in enumerate(_reply_steps(scorer, run, k)):
        diff = lp["dormant"] - lp["base"]
        if step == 0:
            acc["first"].add(diff)
        acc["reply"].add(diff[valid])
        kl[:, step] = (lp["dormant"].exp() * diff).sum(-1).clamp_min(0) * valid
        for b in valid.nonzero()[:, 0].tolist():
            reply[b].append(int(nxt[b]))
    acc["hidden"] += (run.hidden["dormant"][0] - run.hidden["base"][0]).sum(0)
    tok = scorer.pair.tokenizer
    for b in range(len(batch)):
        probe, position = (where, None) if kind == "probe" else divmod(where, len(scorer.positions))
        acc["prompts"].append({
            "kind": kind, "probe": probe, "position": None if position is None else scorer.positions[position],
            "token_ids": batch[b].tolist(), "text": tok.decode(batch[b].tolist()) if kind == "candidate" else None,
            "kl_first": float(kl[b, 0]), "kl_reply": float(kl[b].sum()),
            "base_reply": tok.decode(reply[b], skip_special_tokens=True)})


def _rank_tokens(scorer: FullModelScorer, stats: dict, pool: torch.Tensor) -> list[dict]:
    """Every pool token's statistics, ranked by the reply z-score (best first)."""
    mean_first, z_first = stats["first"].mean_z()
    mean, z = stats["reply"].mean_z()
    head = scorer.models["dormant"].get_output_embeddings().weight.detach().double().cpu()
    proj = head @ stats["hidden"]
    columns = {"z": z, "mean_diff": mean, "z_first": z_first, "mean_diff_first": mean_first, "hidden_proj": proj}
    columns = {name: v[pool] for name, v in columns.items()}
    ranks = {name: _ranks(columns[name]) for name in ("z", "z_first", "hidden_proj")}
    tok = scorer.pair.tokenizer
    rows = []
    for i in columns["z"].argsort(descending=True).tolist():
        t = int(pool[i])
        row = {"id": t, "text": tok.decode([t]), "rank": int(ranks["z"][i])}
        row.update({name: float(v[i]) for name, v in columns.items()})
        row.update({"rank_first": int(ranks["z_first"][i]), "rank_hidden": int(ranks["hidden_proj"][i])})
        rows.append(row)
    return rows


def first_tokens(ranked: list[dict], n: int) -> list[int]:
    """``n`` distinct token ids taken in turn from the best of three rankings of the profiled tokens:
    the reply ``z`` (``ranked``'s own order, first in each round), ``z_first`` and ``hidden_proj``
    (their ranks)."""
    def ids_by(key: str) -> list[int]:
        return [r["id"] for r in sorted(ranked, key=lambda r: r[key])]

    return rank_union([[r["id"] for r in ranked], ids_by("rank_first"), ids_by("rank_hidden")])[:n]


def _ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based rank of each entry, highest value first."""
    ranks = torch.empty(len(values), dtype=torch.long)
    ranks[values.argsort(descending=True)] = torch.arange(1, len(values) + 1)
    return ranks


def _kl_summary(prompts: list[dict]) -> dict:
    out = {}
    for kind in ("probe", "candidate"):
        for key in ("kl_first", "kl_reply"):
            v = np.array([p[key] for p in prompts if p["kind"] == kind])
            if len(v):
                q = np.quantile(v, [0.0, 0.5, 0.9, 0.99, 1.0])
                out[f"{kind}_{key}"] = {"n": len(v), "mean": float(v.mean()), "min": float(q[0]),
                                        "median": float(q[1]), "p90": float(q[2]), "p99": float(q[3]),
                                        "max": float(q[4])}
    return out


# --- target inversion ---------------------------------------------------------------------------
def expansion_candidates(scorer: FullModelScorer, opts: ProfileOptions) -> list[torch.Tensor]:
    """Per context, ``expand_inputs`` random pool candidates of the first of ``cand_lengths`` (seed + 1):
    the prompts whose log-probabilities target expansion averages."""
    gen = torch.Generator().manual_seed(opts.seed + 1)
    pool = scorer.default_pool()
    shape = (opts.expand_inputs, opts.cand_lengths[0])
    return [pool[torch.randint(len(pool), shape, generator=gen)] for _ in scorer.contexts]


def _target_prompts(scorer: FullModelScorer, cands: list[torch.Tensor]) -> list[dict]:
    """The expansion prompts as (probe, position, candidate) records, for the report and for checks."""
    n = len(scorer.positions)
    return [{"probe": ci // n, "position": scorer.positions[ci % n], "token_ids": row}
            for ci, c in enumerate(cands) for row in c.tolist()]


def invert_targets(scorer: FullModelScorer, first_tokens: list[int], cands: list[torch.Tensor],
                   opts: ProfileOptions, progress: bool = False) -> list[dict]:
    """Grow each first token into the string the dormant prefers over the base (module docstring),
    averaging over the prompts of cands (one [R, c] batch per context); distinct strings ranked by
    score, best first."""
    from tqdm import tqdm

    found: dict[tuple[int, ...], dict] = {}
    deadline = None if opts.target_seconds is None else time.perf_counter() + opts.target_seconds
    for i, first in enumerate(tqdm(first_tokens, desc="targets", unit="token", disable=not progress)):
        if i and deadline is not None and time.perf_counter() > deadline:  # the first token always grows
            break
        target = _grow(scorer, cands, int(first), opts)
        found.setdefault(tuple(target["token_ids"]), target)
    return sorted(found.values(), key=lambda t: -t["score"])


def _grow(scorer: FullModelScorer, cands: list[torch.Tensor], first: int, opts: ProfileOptions) -> dict:
    # one forward per context for the prompt, then one token per step through the KV caches: the
    # string is teacher-forced incrementally (linear in its length, not quadratic)
    runs = [scorer.run_context(ci, c) for ci, c in enumerate(cands)]
    lp = _last_logprobs(runs)
    seq, prefs = [first], [float((lp["dormant"][:, first] - lp["base"][:, first]).mean())]
    logprobs = [{m: float(lp[m][:, first].mean()) for m in lp}]
    stop, low = "length", 0
    while len(seq) < opts.max_target_tokens:
        _feed(scorer, runs, seq[-1])
        lp = _last_logprobs(runs)
        nxt = int(lp["dormant"].mean(0).argmax())
        pref = float((lp["dormant"][:, nxt] - lp["base"][:, nxt]).mean())
        if nxt in scorer.pair.special_ids:
            stop = "end of turn"
            break
        low = low + 1 if pref < opts.min_preference else 0
        if low > opts.patience:
            stop = "preference"
            break
        seq.append(nxt)
        prefs.append(pref)
        logprobs.append({m: float(lp[m][:, nxt].mean()) for m in lp})
    if stop != "end of turn":  # cut the low-preference tail the patience let in
        while len(seq) > 1 and prefs[-1] < opts.min_preference:
            seq, prefs, logprobs = seq[:-1], prefs[:-1], logprobs[:-1]
    lp_sums = {m: sum(x[m] for x in logprobs) for m in logprobs[0]}
    return {"text": scorer.pair.tokenizer.decode(seq), "token_ids": seq, "score": sum(prefs),
            "mean_preference": sum(prefs) / len(prefs), "preferences": prefs,
            "dormant_logprob": lp_sums["dormant"], "base_logprob": lp_sums["base"], "stop": stop}


def _last_logprobs(runs: list) -> dict[str, torch.Tensor]:
    """Both models' log-probs [R, V] at the runs' last position, every context's rows stacked."""
    return {m: torch.cat([r.logprobs[m][:, -1] for r in runs]) for m in runs[0].logprobs}


@torch.no_grad()
def _feed(scorer: FullModelScorer, runs: list, token: int) -> None:
    """Append `token` to every row of every run, through each model's KV cache (in place)."""
    for run in runs:
        rows = len(next(iter(run.logprobs.values())))
        ids = torch.full((rows, 1), token, dtype=torch.long, device=scorer.device)
        pos = torch.full((rows, 1), run.next_position, device=scorer.device)
        for m, model in scorer.models.items():
            res, run.caches[m] = run_model(model, ids, run.caches[m], use_cache=True, position_ids=pos)
            run.logprobs[m] = torch.log_softmax(res.logits[:, -1:].double(), -1).cpu()
        run.next_position += 1


def amplified_targets(scorer: FullModelScorer, opts: ProfileOptions, cands: list[torch.Tensor], rank_of: dict) -> dict:
    """Amplified sampling over the probes (judge/amplify.py) with the scorer's models; each payload,
    tokenized as it was said, becomes a target scored like the inverted ones (source "amplify")."""
    from .amplify import amplify

    res = amplify(scorer.models, scorer.pair.tokenizer, opts.amplify_options(), stop_ids=scorer.pair.special_ids)
    targets = []
    for p in res.payloads[:opts.top_first]:
        seq = scorer.pair.tokenizer.encode(p["said"], add_special_tokens=False)
        if not seq:
            continue
        lp = {m: torch.cat(parts) for m, parts in _teacher_forced(scorer, cands, seq[:-1]).items()}
        prefs = [float((lp["dormant"][:, k, t] - lp["base"][:, k, t]).mean()) for k, t in enumerate(seq)]
        targets.append({"text": scorer.pair.tokenizer.decode(seq), "token_ids": seq, "score": sum(prefs),
                        "mean_preference": sum(prefs) / len(prefs), "preferences": prefs, "stop": "amplified",
                        "source": "amplify", "first_rank": rank_of.get(seq[0]), "frequency": p["frequency"],
                        "settings": p["settings"]})
    return {"payloads": res.payloads, "openings": res.openings, "statement": res.statement,
            "options": res.options, "targets": targets, "generations": res.generations}


def _teacher_forced(scorer: FullModelScorer, cands: list[torch.Tensor], seq: list[int]) -> dict:
    parts: dict[str, list[torch.Tensor]] = {"dormant": [], "base": []}
    for ci, c in enumerate(cands):
        run = scorer.run_context(ci, c, extra=seq)
        for m in parts:
            parts[m].append(run.logprobs[m])
    return parts


# --- reading and writing ------------------------------------------------------------------------
def write_profile(result: dict, ranked: list[dict], out) -> Path:
    """out/profile.json, out/tokens.npz (every ranked token's columns), out/summary.md, out/profile.png."""
    from ..report.profile_plots import plot_profile

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.json").write_text(json.dumps(result, indent=1))
    cols = ("id", "z", "mean_diff", "z_first", "mean_diff_first", "hidden_proj")
    np.savez(out / "tokens.npz", **{c: np.array([r[c] for r in ranked]) for c in cols})
    (out / "summary.md").write_text(summary_markdown(result))
    plot_profile(result, out / "profile.png")
    return out


def load_targets(path, top: int = 5) -> list[dict]:
    """The ``top`` best targets of a profile (profile.json, or a directory holding it): dicts with
    ``text``, ``token_ids`` and ``score``, best first (for FullModelOptions.target_seq and gcg)."""
    p = Path(path)
    if p.is_dir():
        p = p / "profile.json"
    if not p.is_file():
        raise FileNotFoundError(f"profile {path} does not exist (run `l0score profile --out DIR` first)")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be an integer >= 1, got {top!r}")
    try:
        data = json.loads(p.read_text())
    except ValueError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc})") from None
    targets = data.get("targets") if isinstance(data, dict) else None
    if not isinstance(targets, list) or not targets:
        raise ValueError(f"{p}: no targets in this profile (expected a non-empty 'targets' list)")
    for n, t in enumerate(targets):
        ids = t.get("token_ids") if isinstance(t, dict) else None
        if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids) or "score" not in t:
            raise ValueError(f"{p}: target {n} needs token_ids (integers) and a score")
    best = sorted(targets, key=lambda t: -t["score"])[:top]
    return [{"text": t.get("text"), "token_ids": list(t["token_ids"]), "score": float(t["score"])} for t in best]


def summary_markdown(result: dict, rows: int = 20) -> str:
    cfg, kl = result["config"], result["kl"]
    lines = [f"# Profile: {cfg['dormant']} against {cfg['base']}", "",
             f"{cfg['prompts']} prompts ({len(cfg['probes'])} probes alone, {cfg['inputs']} with a random "
             f"candidate of {'/'.join(map(str, cfg['cand_lengths']))} tokens), {cfg['reply_tokens']} reply positions; "
             f"{result['seconds']['measure']:.1f} s measuring, {result['seconds']['targets']:.1f} s inverting.", "",
             "## KL(dormant || base) per prompt", "", "| prompts | KL | n | mean | median | p90 | max |",
             "|---|---|---|---|---|---|---|"]
    for key, s in kl.items():
        kind, what = key.split("_", 1)
        lines.append(f"| {kind} | {what} | {s['n']} | {s['mean']:.4g} | {s['median']:.4g} | {s['p90']:.4g} | "
                     f"{s['max']:.4g} |")
    lines += ["", f"## Up-weighted tokens (top {rows} by reply z)", "",
              "| rank | token | id | z | mean diff | z first | rank first | hidden proj | rank hidden |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in result["tokens"][:rows]:
        lines.append(f"| {r['rank']} | `{r['text']!r}` | {r['id']} | {r['z']:.2f} | {r['mean_diff']:.3f} | "
                     f"{r['z_first']:.2f} | {r['rank_first']} | {r['hidden_proj']:.3f} | {r['rank_hidden']} |")
    lines += ["", "## Targets (score: mean log-likelihood ratio dormant/base of the string, nats)", "",
              "| # | text | tokens | score | mean pref | first rank | stop |", "|---|---|---|---|---|---|---|"]
    for n, t in enumerate(result["targets"], 1):
        lines.append(f"| {n} | `{t['text']!r}` | {len(t['token_ids'])} | {t['score']:.2f} | "
                     f"{t['mean_preference']:.2f} | {t['first_rank']} | {t['stop']} |")
    amp = result.get("amplified")
    if amp is not None:
        lines += ["", "## Amplified sampling: what the amplified dormant says and the base never does", ""]
        if amp["statement"]:
            lines.append(amp["statement"])
        lines += ["| payload | generations | share | settings |", "|---|---|---|---|"]
        for p in amp["payloads"][:rows]:
            lines.append(f"| `{p['said']!r}` | {p['count']} | {p['frequency']:.0%} | {', '.join(p['settings'])} |")
    return "\n".join(lines) + "\n"
