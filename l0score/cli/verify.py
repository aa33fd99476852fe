"""`l0score verify`: confirm candidates with both full models (KL, generations, flips)."""
from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.table import Table

from .args import add_pair_args, add_ray_arg, console, executor_of, int_list, resolve_pair


def register(sub) -> None:
    p = sub.add_parser("verify", help="confirm candidates with both full models (KL, generations, flips)")
    add_pair_args(p)
    p.add_argument("--candidates", help="search output: JSONL lines with token_ids and text")
    p.add_argument("--text", action="append", help="a candidate as text, tokenized once (repeatable)")
    p.add_argument("--ids", type=int_list, action="append", help="a candidate as comma-separated ids (repeatable)")
    p.add_argument("--limit", type=int, default=20, help="candidates read from --candidates (first N lines, default 20)")
    p.add_argument("--probes", help="probe prompts, one per line (default: a built-in set of 8)")
    p.add_argument("--out", default="verify_report.json", help="report JSON (.md and .png written next to it)")
    p.add_argument("--sequential", action="store_true", help="one model in memory at a time (results cached on disk)")
    p.add_argument("--cache-dir", help="where --sequential caches per-model results (default: a temp dir, removed)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--position", choices=("before", "after", "both"), default="both",
                   help="candidate placement in the user turn relative to the probe")
    p.add_argument("--sep", help="text joining candidate and probe (default: space before, newline after)")
    p.add_argument("--system", help="system message (default: the chat template's own)")
    p.add_argument("--system-prompts",
                   help="file of system prompts, one a line (<default>: the template's own, <empty>): every probe "
                        "runs under each, and the flip rate is reported per context")
    p.add_argument("--null-samples", type=int, default=32,
                   help="random candidates of each candidate length a flip must beat on flip rate and KL [32; 0: "
                        "the fixed flip-rate rule]")
    p.add_argument("--top-k", type=int, default=10, help="k of the top-k overlap")
    p.add_argument("--sample", action="store_true", help="seeded sampling instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flip-threshold", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--plot-top", type=int, default=5, help="candidates drawn in the per-layer PNG")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 avoids oversubscription on a busy machine)")
    add_ray_arg(p)
    p.set_defaults(func=run)


def _candidates(args, base, dormant) -> list:
    from ..core.checkpoint import resolve_model_dir
    from ..core.model_pair import load_tokenizer
    from ..judge.prompts import read_candidates_file

    cands: list = [list(ids) for ids in args.ids or []] + list(args.text or [])
    if args.candidates:
        tok = load_tokenizer(resolve_model_dir(dormant)) or load_tokenizer(resolve_model_dir(base))
        from_file = read_candidates_file(args.candidates, tok, limit=args.limit)
        total = sum(1 for line in Path(args.candidates).read_text().splitlines() if line.strip())
        if total > len(from_file):
            console.print(f"verifying the first {len(from_file)} of {total} candidates in {args.candidates} (--limit)")
        cands += from_file
    if not cands:
        raise ValueError("no candidates to verify: give --candidates FILE, --text or --ids")
    return cands


def run(args) -> None:
    from ..judge.prompts import POSITIONS
    from ..judge.verify import VerifyOptions, verify

    base, dormant = resolve_pair(args)
    cands = _candidates(args, base, dormant)
    positions = POSITIONS if args.position == "both" else (args.position,)
    options = VerifyOptions(sequential=args.sequential, device=args.device, dtype=args.dtype,
                            max_new_tokens=args.max_new_tokens, positions=positions, sep=args.sep, system=args.system,
                            system_prompts=args.system_prompts, null_samples=args.null_samples, top_k=args.top_k,
                            sample=args.sample, temperature=args.temperature, top_p=args.top_p,
                            seed=args.seed, flip_threshold=args.flip_threshold, batch_size=args.batch_size,
                            cache_dir=args.cache_dir, plot_top=args.plot_top, threads=args.threads)
    report = verify(base, dormant, cands, args.probes, options, out=args.out, executor=executor_of(args))
    _print(report)


def _print(report: dict) -> None:
    summary = report["summary"]
    table = Table(title=f"verify: {len(report['results'])} candidates x {len(report['config']['probes'])} probes, "
                        f"untriggered KL {summary['kl_untriggered']:.4g}, untriggered agreement "
                        f"{summary['untriggered_agreement']:.0%} of probes")
    for col in ("rank", "candidate", "KL", "amplification", "JS", "top-1 agree", "flip rate", "beats random", "flip"):
        table.add_column(col)
    for r in report["results"][:20]:
        null = r.get("null")
        flip = "[bold red]yes[/bold red]" if r["flip"] else "no"
        table.add_row(str(r["rank"]), escape(repr(r["text"])), f"{r['kl']:.4g}", f"{r['amplification']:.3g}",
                      f"{r['js']:.4g}", f"{r['top1_agreement']:.2f}", f"{r['flip_rate']:.2f}",
                      f"{null['beaten']}/{null['n']}" if null else "",
                      f"{flip} (template injection)" if r.get("template_injection") else flip)
    console.print(table)
    if summary.get("template_injections"):
        console.print(f"{len(summary['template_injections'])} candidate(s) hold a piece of the chat template (a role "
                      "name, a role tag or its newline): ranked below every clean flip, since forging a turn "
                      "boundary changes any chat model's answer", soft_wrap=True)
    files = report.get("files", {})
    console.print(f"report: {files.get('json')}  summary: {files.get('markdown')}  plot: {files.get('plot')}")
