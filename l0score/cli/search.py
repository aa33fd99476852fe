"""`l0score search {pairs,beam,mcts,coord,gcg}`: the search drivers on the command line."""
from __future__ import annotations

import json
import time
from pathlib import Path

from rich.table import Table

from .args import (add_pair_args, add_ray_arg, add_scoring_args, console, executor_of, int_list, make_scorer,
                   read_candidates, resolve_pair)


def register(sub) -> None:
    p = sub.add_parser("search", help="search for trigger candidates (pairs, beam, mcts, coord)")
    drivers = p.add_subparsers(dest="driver", required=True)
    for name, help_ in (("pairs", "exact scan over (query token, key token, offset)"),
                        ("beam", "beam search by incremental extension"),
                        ("mcts", "Monte Carlo tree search (PUCT) over prefixes"),
                        ("coord", "exact coordinate ascent with random restarts")):
        d = drivers.add_parser(name, help=help_)
        add_pair_args(d)
        add_scoring_args(d)
        add_ray_arg(d)
        _common(d)
        d.set_defaults(func=run_search)
        if name == "pairs":
            d.add_argument("--top", type=int, default=50, help="triples kept overall and per head")
            d.set_defaults(offsets=[1, 2, 3])
        else:
            _sequence_options(d)
        if name == "beam":
            d.add_argument("--width", type=int, default=16)
            d.add_argument("--grow", choices=("both", "right"), default="both",
                           help="extend fragments on both sides (default) or append only")
            d.add_argument("--left-screen", type=int, default=64,
                           help="left tokens tried per head and fragment, picked by their exact cells (0: all)")
        if name == "mcts":
            d.add_argument("--branch", type=int, default=16, help="children kept per expanded node")
            d.add_argument("--batch", type=int, default=8, help="leaves evaluated together (virtual loss)")
            d.add_argument("--c-puct", type=float, default=1.5)
            d.add_argument("--rollout", choices=("greedy", "random", "none"), default="greedy",
                           help="leaf value: a greedy (default) or random completion, or its exact score (none)")
        if name == "coord":
            d.add_argument("--restarts", type=int, default=4)
            d.add_argument("--max-sweeps", type=int, default=8)
    _register_gcg(drivers)


def _common(d) -> None:
    d.add_argument("--out", required=True, help="results, JSONL, best first")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--seconds", type=float, help="time budget")
    d.add_argument("--checkpoint-every", type=float, default=30.0, help="seconds between checkpoints")
    d.add_argument("--resume", action="store_true", help="continue from OUT.ckpt.json")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.add_argument("--heads-from", help="analysis.json from `l0score analyze`: score only its focus heads")
    g = d.add_argument_group("token pool (specials and padding rows are always excluded)")
    g.add_argument("--ascii", action="store_true", help="only tokens whose text is ASCII")
    g.add_argument("--printable", action="store_true", help="only tokens whose text is printable")
    g.add_argument("--no-whitespace", action="store_true", help="drop whitespace-only tokens")
    g.add_argument("--allow-regex", help="keep tokens whose text matches")
    g.add_argument("--deny-regex", help="drop tokens whose text matches")
    g.add_argument("--allow-list", help="file of allowed token ids")
    g.add_argument("--pool-roundtrip", action="store_true", help="only tokens that decode/encode to themselves")
    g.add_argument("--allow-template-tokens", action="store_true",
                   help="also search the chat template's pieces (role names, role tags, their newline), which are "
                        "left out by default: a candidate that forges a turn boundary is no trigger")


def _sequence_options(d) -> None:
    d.add_argument("--metric", default="kl", help="max_abs, kl, band, or a weighted sum 'max_abs=1,kl=0.5'")
    d.add_argument("--length", type=int, required=True, help="candidate length in tokens")
    d.add_argument("--budget", type=int, help="candidates to score at most")
    d.add_argument("--threshold", type=float, help="stop once the best score reaches this")
    d.add_argument("--top", type=int, default=20, help="rows in the printed table")
    d.add_argument("--keep", type=int, default=100, help="results written to --out")
    d.add_argument("--roundtrip", choices=("report", "search", "off"), default="report",
                   help="drop results whose text does not re-tokenize to the same ids (report, the default), "
                        "also prune such prefixes during beam search (search), or keep everything (off)")
    d.add_argument("--seeds", default=None,
                   help="'pairs' (best token pairs from an exact scan, of the focus heads when an analysis is "
                        "given; cached on disk), 'none', or a JSONL/ids file of prefixes (default: pairs, or none "
                        "with --seeds-from)")
    d.add_argument("--seeds-from", help="analysis.json from `l0score analyze`: its seed_tokens start the search")
    d.add_argument("--n-seeds", type=int, default=16)
    d.add_argument("--max-repeat", type=int, default=1,
                   help="max occurrences of one token in a candidate (default 1: every token once)")
    d.add_argument("--minimize", action="store_true", help="also report each top result with tokens dropped while the score holds")
    d.add_argument("--first-module", metavar="LOCATION|auto",
                   help="score on the first changed module instead of Layer 0: mlp@L0, attn@L3, embed, or auto (the "
                        "base check); --backend native|triton runs an attention location's dS on the fused kernels "
                        "(auto: torch) (docs/first-module.md)")
    d.add_argument("--first-module-k", type=int, default=0, help="with --first-module: also run both models k layers on [0]")


def run_search(args) -> None:
    from ..search import build_pool, minimize, seeds_from_pairs
    from ..search.pair_cache import cached_pair_scan as pair_scan

    if getattr(args, "first_module", None):  # the first changed module's scorer (docs/first-module.md); not for pairs
        return _run_first_module(args)
    scorer = _focus(make_scorer(args), args)
    _refuse_zero_layer0(scorer.pair)
    pool = build_pool(scorer.pair, ascii_only=args.ascii, printable_only=args.printable,
                      no_whitespace_only=args.no_whitespace, allow_regex=args.allow_regex,
                      deny_regex=args.deny_regex, allow_list=args.allow_list, roundtrip=args.pool_roundtrip,
                      allow_template_tokens=args.allow_template_tokens)
    console.print(f"pool: {len(pool)} tokens; template {scorer.template.name} "
                  f"({len(scorer.template.prefix_ids)}+{len(scorer.template.suffix_ids)} context tokens); "
                  f"backend {scorer.backend.name}")
    start = time.perf_counter()
    if args.driver == "pairs":
        scan = pair_scan(scorer, pool, offsets=args.offsets, top=args.top, progress=not args.quiet,
                         checkpoint=args.out + ".ckpt.json", resume=args.resume, seconds=args.seconds,
                         executor=executor_of(args))
        _write_pairs(args.out, scan)
        _print_pairs(scan, args.top)
        reused = f" ({len(scan['cached_heads'])} heads reused from {scan['cache_dir']})" if scan["cached_heads"] else ""
        console.print(f"pair scan of {len(pool)}^2 tokens x {len(args.offsets)} offsets x {len(scorer.heads)} heads "
                      f"in {time.perf_counter() - start:.1f} s{reused} -> {args.out}")
        return

    seeds = _seeds(args, scorer, pool, seeds_from_pairs, pair_scan)
    run_kw = dict(objective=args.metric, pool=pool, out=args.out, budget=args.budget, seconds=args.seconds,
                  threshold=args.threshold, checkpoint_every=args.checkpoint_every, resume=args.resume,
                  progress=not args.quiet, keep=args.keep, roundtrip=args.roundtrip, seed=args.seed,
                  max_repeat=args.max_repeat, executor=executor_of(args))
    results = _drive(args, scorer, seeds, run_kw, left_screen=getattr(args, "left_screen", None) or None)
    if args.minimize:
        for rec in results[: args.top]:
            rec["minimized"] = minimize(scorer, rec["token_ids"], args.metric)
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in results))
    _print_results(results, args, time.perf_counter() - start)
    if not results:
        console.print(_why_empty(args, len(pool)), soft_wrap=True)


def _why_empty(args, pool_size: int) -> str:
    """What stopped a search before it completed one candidate of the requested length."""
    ckpt = Path(args.out + ".ckpt.json")
    scored = json.loads(ckpt.read_text())["used"] if ckpt.exists() else 0
    if args.budget is not None and scored >= args.budget:
        limit = f"--budget {args.budget}"
    elif args.seconds is not None:
        limit = f"--seconds {args.seconds:g}"
    else:
        limit = "the search's end"
    first = f" (a beam step scores every pool token for each fragment: {pool_size} per fragment)" \
        if args.driver == "beam" else ""
    return (f"no results: {scored} candidates were scored and none of length {args.length} was completed before "
            f"{limit} stopped the search{first}; raise the limit, or narrow the pool (--allow-list, --allow-regex)")


def _refuse_zero_layer0(pair) -> None:
    """A Layer-0 search on a pair whose Layer-0 logits cannot differ would rank noise: say why instead."""
    from ..analysis.base_check import layer0_zero_reason

    reason = layer0_zero_reason(pair)
    if reason:
        raise ValueError(f"no Layer-0 search on this pair: {reason} (`l0score base-check` shows where it lives)")


def _seeds(args, scorer, pool, seeds_from_pairs, pair_scan) -> list[list[int]] | None:
    if args.length <= 0:
        raise ValueError(f"--length must be a positive number of tokens, got {args.length}")
    chosen = args.seeds or ("none" if args.seeds_from else "pairs")
    seeds = []
    if args.seeds_from:
        from ..analysis.weight_diff import load_focus_heads, load_seed_tokens

        seeds = [[t] for t in load_seed_tokens(args.seeds_from)[: args.n_seeds]]
        if chosen == "pairs" and not args.heads_from:  # the scan covers the analysis' focus heads only
            scorer = scorer.with_heads(load_focus_heads(args.seeds_from) or scorer.heads)
    if chosen == "none":
        return seeds or None
    if chosen == "pairs":
        if args.length < 2:
            return seeds or None
        scan = pair_scan(scorer, pool, offsets=(1,), top=max(args.n_seeds * 4, 16), progress=not args.quiet,
                         executor=executor_of(args))
        return seeds + seeds_from_pairs(scan, args.n_seeds)
    return seeds + read_candidates(chosen, scorer.pair.tokenizer)


def _focus(scorer, args):
    """The scorer restricted to an analysis' focus heads (--heads-from)."""
    if not getattr(args, "heads_from", None):
        return scorer
    if args.heads:
        raise ValueError("give --heads or --heads-from, not both")
    from ..analysis.weight_diff import load_focus_heads

    heads = load_focus_heads(args.heads_from)
    if not heads:
        raise ValueError(f"{args.heads_from}: the analysis names no focus heads")
    return scorer.with_heads(heads)


def _write_pairs(out: str, scan: dict) -> None:
    lines = [{"scope": "overall", "rank": n, **row} for n, row in enumerate(scan["top"], 1)]
    for head, rows in scan["per_head"].items():
        lines += [{"scope": "head", "rank": n, **row} for n, row in enumerate(rows, 1)]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("".join(json.dumps(line) + "\n" for line in lines))


def _print_pairs(scan: dict, top: int) -> None:
    table = Table(title=f"top {min(top, 20)} (query token, key token, offset) triples by |dS|"
                        + ("" if scan.get("complete", True) else " (partial scan)"))
    for col in ("rank", "query", "key", "offset", "head", "dS"):
        table.add_column(col)
    for n, row in enumerate(scan["top"][:20], 1):
        table.add_row(str(n), f"{row['query_token']} {row.get('query_text', '')!r}",
                      f"{row['key_token']} {row.get('key_text', '')!r}", str(row["offset"]), str(row["head"]),
                      f"{row['value']:+.4f}")
    console.print(table)


def _print_results(results: list[dict], args, seconds: float) -> None:
    table = Table(title=f"{args.driver}: top {min(args.top, len(results))} by {args.metric}")
    for col in ("rank", "text", "token_ids", "score", "z", "max_abs", "kl", "step"):
        table.add_column(col)
    for n, r in enumerate(results[: args.top], 1):
        table.add_row(str(n), repr(r["text"]), str(r["token_ids"]), f"{r['score']:.4f}",
                      "" if r["z"] is None else f"{r['z']:.1f}",
                      f"{r['max_abs']:.4f}", f"{r['kl']:.4f}", str(r["step"]))
    console.print(table)
    for r in results[: args.top]:
        if "minimized" in r and r["minimized"]["removed"]:
            m = r["minimized"]
            console.print(f"{r['token_ids']} -> {m['token_ids']} keeps {m['score']:.4f} of {m['original_score']:.4f}")
    console.print(f"{len(results)} results in {seconds:.1f} s -> {args.out}")


# --- search gcg, and the full-model objective's options (shared with hunt) --------------------------

def add_full_model_args(p) -> None:
    """The full-model objective's options (`make_full_scorer` reads them): search gcg and hunt."""
    g = p.add_argument_group("full-model objective (--objective full: both complete models judge every candidate)")
    g.add_argument("--objective", choices=("layer0", "full"), default="layer0",
                   help="score candidates by Layer 0 alone (default) or by both full models over probe prompts")
    g.add_argument("--probes", help="probe prompts, one per line (default: the first 3 of verify's probes)")
    g.add_argument("--positions", default="before,after",
                   help="candidate placements: before, after, before,after or both (= before,after)")
    g.add_argument("--target", action="append",
                   help="target reply text (repeatable): 'target' uses each one's first token, 'target_seq' the first text")
    g.add_argument("--targets-from", help="profile.json of `l0score profile`: its best targets instead of --target")
    g.add_argument("--target-top", type=int, default=1, help="targets taken from --targets-from [1]")
    g.add_argument("--target-weight", type=float, default=1.0, help="lambda of the target losses [1.0]")
    g.add_argument("--reply-tokens", type=int, default=8, help="k reply positions of tf_kl [8]")
    g.add_argument("--system-prompts",
                   help="file of system prompts, one a line (<default>: the template's own, <empty>): the objective "
                        "combines over systems x probes x placements (--reduce)")
    g.add_argument("--hidden-layers", type=int_list, default=[-1], help="hidden states compared by 'hidden' [-1]")
    g.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--full-batch", type=int, default=64, help="prompts per forward call [64]")
    g.add_argument("--reduce", choices=("mean", "min"), default="mean",
                   help="each metric over probes x placements: mean, or min (the worst context) [mean]")
    g.add_argument("--pool-from", help="token ids to search over: an ids file, a JSON list, search JSONL "
                                      "(their token_ids) or analysis.json (its seed_tokens); filters still apply")
    g.add_argument("--pool-top", type=int, help="only the first N ids of --pool-from (ranked lists: the best N)")


def metric_names(spec: str) -> list[str]:
    """The metric names of an objective spec like 'kl' or 'target=1,kl=0.5'."""
    return [item.partition("=")[0].strip() for item in str(spec or "").split(",") if item.strip()]


def make_full_scorer(args):
    """The full-model objective (`FullModelScorer`) from add_full_model_args' options.

    Computes kl and js always, and whatever else args.metric names: hidden, tf_kl (--reply-tokens),
    target (the first token of each target), target_seq (the first target's tokens), the targets
    coming from --target TEXT or --targets-from profile.json (its --target-top best).
    """
    from ..core.checkpoint import resolve_model_dir
    from ..core.model_pair import load_tokenizer
    from ..judge.fullmodel import FULL_METRICS, FullModelOptions, FullModelScorer
    from ..search.objective import Objective

    Objective.parse(args.metric, FULL_METRICS)  # unknown names fail before any model loads
    names = set(metric_names(args.metric))
    base, dormant = resolve_pair(args)
    targets = []
    if names & {"target", "target_seq"}:
        if args.target and args.targets_from:
            raise ValueError("give --target or --targets-from, not both")
        if args.target:
            tok = load_tokenizer(resolve_model_dir(dormant)) or load_tokenizer(resolve_model_dir(base))
            if tok is None:
                raise ValueError("--target TEXT needs a tokenizer in the model directory")
            targets = [tok.encode(text, add_special_tokens=False) for text in args.target]
            if not all(targets):
                raise ValueError(f"a --target text tokenizes to nothing: {args.target!r}")
        elif args.targets_from:
            from ..judge.profile import load_targets

            targets = [t["token_ids"] for t in load_targets(args.targets_from, args.target_top)]
        else:
            need = sorted(names & {"target", "target_seq"})[0]
            raise ValueError(f"metric {need!r} needs a target: pass --target TEXT or --targets-from profile.json")
    if "tf_kl" in names and args.reply_tokens < 1:
        raise ValueError(f"metric 'tf_kl' needs --reply-tokens >= 1, got {args.reply_tokens}")
    positions = tuple(p.strip() for p in args.positions.split(",") if p.strip())
    positions = ("before", "after") if positions == ("both",) else positions
    options = FullModelOptions(
        probes=args.probes, positions=positions,
        metrics=("kl", "js") + (("hidden",) if "hidden" in names else ()),
        reply_tokens=args.reply_tokens if "tf_kl" in names else 0, hidden_layers=tuple(args.hidden_layers),
        target_ids=tuple(dict.fromkeys(t[0] for t in targets)) if "target" in names else (),
        target_seq=tuple(targets[0]) if "target_seq" in names else (), target_weight=args.target_weight,
        dtype=args.dtype, device=args.device, batch_size=args.full_batch, reduce=args.reduce, system=args.system,
        system_prompts=args.system_prompts)
    return FullModelScorer(base, dormant, options, progress=not getattr(args, "quiet", True))


def _register_gcg(drivers) -> None:
    d = drivers.add_parser("gcg", help="gradient-guided token swaps (GCG), Layer 0 or full models")
    add_pair_args(d)
    add_scoring_args(d)
    _common(d)
    _sequence_options(d)
    add_full_model_args(d)
    d.set_defaults(func=run_gcg, seeds="none", ray=None, heads_from=None)
    g = d.add_argument_group("gcg (docs/gcg.md; defaults of GCGOptions)")
    g.add_argument("--steps", type=int, default=100, help="gradient steps per restart [100]")
    g.add_argument("--topk", type=int, default=32, help="replacement tokens per position from the gradient [32]")
    g.add_argument("--batch", type=int, default=64, help="swapped candidates scored exactly per step [64]")
    g.add_argument("--n-replace", type=int, default=1, help="positions changed per swapped candidate [1]")
    g.add_argument("--restarts", type=int, default=1, help="independent starts [1]")
    g.add_argument("--alpha", type=float,
                   help="weight of the Layer-0 term in alpha*L0 + (1-alpha)*output [1 for layer0, 0 for full]")
    g.add_argument("--layer0-metric", default="kl", help="the Layer-0 term with --objective full [kl]")
    g.add_argument("--tau", type=float, default=0.05, help="smooth-max temperature for max_abs/band gradients")
    g.add_argument("--calibrate", type=int, help="random candidates for z [512 layer0, 64 full; 0: no z-scores]")


def run_gcg(args) -> None:
    import torch

    from ..search import build_pool, seeds_from_pairs
    from ..search.gcg import GCGOptions, gcg
    from ..search.pool import read_pool_ids

    full = args.objective == "full"
    options = GCGOptions(length=args.length, steps=args.steps, topk=args.topk, batch=args.batch,
                         n_replace=args.n_replace, restarts=args.restarts, alpha=args.alpha,
                         layer0_metric=args.layer0_metric, tau=args.tau)
    options.validate()  # before any model is loaded
    if args.first_module:
        return _run_first_module(args, gcg_options=options)
    if args.heads_from:
        raise ValueError("search gcg does not take --heads-from; pass --heads")
    if not full:
        from ..core.scores import METRICS

        needs_full = [m for m in metric_names(args.metric) if m not in METRICS]
        if needs_full:
            raise ValueError(f"metric {needs_full[0]!r} needs the full models: pass --objective full "
                             "(probes from --probes FILE, or verify's default probes)")
    if full and args.seeds == "pairs":
        raise ValueError("--seeds pairs scans Layer 0; with --objective full give --seeds FILE or --seeds-from")
    scorer = make_full_scorer(args) if full else make_scorer(args)
    if not full:
        _refuse_zero_layer0(scorer.pair)
    pool = build_pool(scorer.pair, ascii_only=args.ascii, printable_only=args.printable,
                      no_whitespace_only=args.no_whitespace, allow_regex=args.allow_regex,
                      deny_regex=args.deny_regex, allow_list=args.allow_list, roundtrip=args.pool_roundtrip,
                      allow_template_tokens=args.allow_template_tokens)
    if args.pool_from:
        wanted = read_pool_ids(args.pool_from, args.pool_top)
        pool = pool[torch.isin(pool, torch.tensor(wanted, dtype=torch.long))]
        if not len(pool):
            raise ValueError(f"{args.pool_from}: none of its ids is in the filtered pool")
    seeds = _seeds(args, scorer, pool, seeds_from_pairs, _layer0_pair_scan)
    options.seeds = tuple(tuple(s) for s in (seeds or ()))
    console.print(f"pool: {len(pool)} tokens; objective {args.objective} ({args.metric})")
    start = time.perf_counter()
    result = gcg(scorer, options, objective=args.metric, pool=pool, out=args.out, budget=args.budget,
                 seconds=args.seconds, threshold=args.threshold, checkpoint_every=args.checkpoint_every,
                 resume=args.resume, progress=not args.quiet, keep=args.keep, roundtrip=args.roundtrip,
                 seed=args.seed, max_repeat=args.max_repeat,
                 calibrate=(64 if full else 512) if args.calibrate is None else args.calibrate)
    _print_gcg(result, args, scorer.metrics, time.perf_counter() - start)


def _layer0_pair_scan(scorer, pool, **kw):
    from ..search.pairs import pair_scan

    kw.pop("executor", None)
    return pair_scan(scorer, pool, **kw)


def _print_gcg(result, args, metrics, seconds: float) -> None:
    table = Table(title=f"gcg: top {min(args.top, len(result.results))} by {args.metric}")
    shown = [m for m in metrics if any(m in r for r in result.results)][:4]
    for col in ("rank", "text", "token_ids", "score", "z", *shown, "step"):
        table.add_column(col)
    for n, r in enumerate(result.results[: args.top], 1):
        table.add_row(str(n), repr(r["text"]), str(r["token_ids"]), f"{r['score']:.4f}",
                      "" if r["z"] is None else f"{r['z']:.1f}",
                      *(f"{r[m]:.4f}" if isinstance(r.get(m), float) else "" for m in shown), str(r["step"]))
    console.print(table)
    console.print(f"{len(result.results)} results after {result.steps} gradient steps, {result.evaluations} "
                  f"candidates scored, in {seconds:.1f} s -> {args.out}")


# --- the first-module objective (docs/first-module.md) -----------------------------------------------
def _run_first_module(args, gcg_options=None) -> None:
    """beam / mcts / coord / gcg on the first changed module's exact scorer (--first-module LOCATION|auto)."""
    from ..first_module import FirstModuleOptions, FirstModuleScorer
    from ..search import build_pool
    from .sweep import first_module_backend, location_of

    if args.length <= 0:
        raise ValueError(f"--length must be a positive number of tokens, got {args.length}")
    base, dormant = resolve_pair(args)
    loc = location_of(base, dormant, args.first_module)
    scorer = FirstModuleScorer(base, dormant, FirstModuleOptions(location=loc, k=args.first_module_k,
                                                                 template=args.template,
                                                                 backend=first_module_backend(args.backend, loc)))
    metric = args.metric
    if metric == "kl" and "kl" not in scorer.metrics:  # the Layer-0 default: take this location's own measure
        metric = "div_cand" if args.first_module_k else "mlp_cand" if loc.module == "mlp" else scorer.metrics[0]
    pool = build_pool(scorer.pair, ascii_only=args.ascii, printable_only=args.printable,
                      no_whitespace_only=args.no_whitespace, allow_regex=args.allow_regex,
                      deny_regex=args.deny_regex, allow_list=args.allow_list, roundtrip=args.pool_roundtrip)
    seeds = None if args.seeds in (None, "none", "pairs") else read_candidates(args.seeds, scorer.pair.tokenizer)
    console.print(f"pool: {len(pool)} tokens; objective {scorer.kind} ({metric}; metrics: {', '.join(scorer.metrics)})")
    run_kw = dict(objective=metric, pool=pool, out=args.out, budget=args.budget, seconds=args.seconds,
                  threshold=args.threshold, resume=args.resume, progress=not args.quiet, keep=args.keep,
                  roundtrip=args.roundtrip, seed=args.seed, max_repeat=args.max_repeat)
    start = time.perf_counter()
    if gcg_options is not None:
        from ..search.gcg import gcg

        results = gcg(scorer, gcg_options, calibrate=args.calibrate or 0, **run_kw).results
    else:
        results = _drive(args, scorer, seeds, run_kw, left_screen=None)
    table = Table(title=f"{args.driver}: top {min(args.top, len(results))} by {metric} on {scorer.kind}")
    for col in ("rank", "text", "token_ids", "score", *scorer.metrics):
        table.add_column(col)
    for n, r in enumerate(results[: args.top], 1):
        table.add_row(str(n), repr(r["text"]), str(r["token_ids"]), f"{r['score']:.4f}",
                      *(f"{r[m]:.4g}" for m in scorer.metrics))
    console.print(table)
    console.print(f"{len(results)} results in {time.perf_counter() - start:.1f} s -> {args.out}")


def _drive(args, scorer, seeds, run_kw: dict, left_screen) -> list[dict]:
    """beam, mcts or coord on any scorer of the protocol, with the driver's own flags."""
    from ..search import beam, coord, mcts

    if args.driver == "beam":
        return beam(scorer, length=args.length, width=args.width, seeds=seeds, grow=args.grow,
                    left_screen=left_screen, **run_kw)
    if args.driver == "mcts":
        return mcts(scorer, length=args.length, branch=args.branch, batch=args.batch, c_puct=args.c_puct,
                    rollout=args.rollout, seeds=seeds, **run_kw)
    return coord(scorer, length=args.length, restarts=args.restarts, max_sweeps=args.max_sweeps,
                 seeds=seeds, **run_kw)
