"""A hunt's results as files: report.json (ranked, verified, with the funnel), summary.md and the HTML page."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .markdown import md_cell


def write_hunt_report(hunt) -> dict:
    """Rank what the hunt found, attach verify's measures, write report.json and summary.md (and the
    HTML page when the report module can render it); returns the report."""
    results = _ranked(hunt)
    stages = hunt.state["stages"]
    report = {
        "format": hunt.state["format"], "version": hunt.state["version"], "created": hunt.state["created"],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "base": hunt.base, "dormant": hunt.dormant,
        "config": hunt.state["options"], "complete": all(s in stages for s in hunt.expected_stages()),
        "funnel": [{"stage": name, "candidates": rec.get("candidates"), "seconds": rec.get("seconds"),
                    "note": rec.get("note", "")} for name, rec in stages.items()],
        "results": results,
        "pool": {"size": len(stages.get("layer0", {}).get("pool", [])), "token_ids": stages.get("layer0", {}).get("pool", [])},
    }
    (hunt.out / "summary.md").write_text(markdown(report))
    report["files"] = _files(hunt.out)
    (hunt.out / "report.json").write_text(json.dumps(report, indent=1))
    try:
        from .html import write_report

        report["files"]["html"] = str(Path(write_report(hunt.out)).relative_to(hunt.out))
        (hunt.out / "report.json").write_text(json.dumps(report, indent=1))
    except Exception as exc:  # noqa: BLE001 - the page is a convenience: report.json and summary.md stand alone
        report["html_error"] = f"{type(exc).__name__}: {exc}"
        (hunt.out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def _ranked(hunt) -> list[dict]:
    """Verified clean flips first, shortest first (a flip that contains a shorter flip adds nothing but
    tokens), then by amplification; then the rest of the verified (a flip that holds a piece of the chat
    template among them: it forges a turn, which says nothing about a backdoor); then by objective score."""
    from ..core.template import template_structure

    rows = hunt.collect()
    verified = _verify_rows(hunt.out / "verify" / "report.json")
    tok = hunt.fm().tokenizer if rows else None
    structure = template_structure(tok)
    for r in rows:
        r.setdefault("text", tok.decode(r["token_ids"]))
        r["objective"] = "full"
        r["verify"] = verified.get(tuple(r["token_ids"]))
        r["template_pieces"] = structure.injection(r["token_ids"], r["text"])
        r["template_injection"] = bool(r["template_pieces"])

    def key(r):
        v = r["verify"] or {}
        flip = bool(v.get("flip")) and not r["template_injection"]
        return (r["verify"] is None, not flip, len(r["token_ids"]) if flip else 0, -v.get("amplification", 0.0),
                -r["score"])

    rows.sort(key=key)
    rows = rows[:100]
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    _add_layer0_scores(hunt, rows)
    return rows


def _add_layer0_scores(hunt, rows: list[dict]) -> None:
    """Each row's Layer-0 max |dS| and KL (chat template, all heads), next to its full-model score."""
    if not rows:
        return
    from ..scorer import Scorer

    scorer = Scorer.from_pretrained(hunt.base, hunt.dormant, template="chat")
    scores = scorer.score_batch([r["token_ids"] for r in rows])
    for b, r in enumerate(rows):
        r["layer0"] = {"max_abs": float(scores.max_abs[b]), "kl": float(scores.kl[b])}


def _verify_rows(path: Path) -> dict:
    if not path.exists():
        return {}
    rep = json.loads(path.read_text())
    keys = ("flip", "flip_rate", "amplification", "kl", "js", "consistency", "null", "contexts")
    return {tuple(r["token_ids"]): {k: r[k] for k in keys if k in r} for r in rep["results"]}


def _files(out: Path) -> dict:
    names = {"analysis": "analysis/analysis.json", "profile": "profile/profile.json", "pool": "layer0/pool.json",
             "verify": "verify/report.json", "summary": "summary.md"}
    return {k: v for k, v in names.items() if (out / v).exists()}


def markdown(report: dict) -> str:
    lines = ["# l0score hunt", "", f"- base: `{report['base']}`", f"- dormant: `{report['dormant']}`",
             f"- {'complete' if report['complete'] else '**incomplete** (resume with --resume)'}; "
             f"started {report['created']}, written {report['finished']}", "",
             "## Funnel", "", "| stage | candidates scored | seconds | note |", "|---|---:|---:|---|"]
    for f in report["funnel"]:
        lines.append(f"| {f['stage']} | {f['candidates']} | {f['seconds']} | {md_cell(f['note'])} |")
    lines += ["", "## Ranked candidates", ""]
    injected = [r for r in report["results"] if r.get("template_injection")]
    if injected:
        lines += [f"{len(injected)} candidate(s) hold a piece of the chat template (a role name, a role tag or its "
                  "newline): marked as template injections and ranked below every clean flip, since forging a "
                  "turn boundary changes any chat model's answer.", ""]
    lines += ["| rank | candidate | ids | route | full-model score | z | flip | beats random | amplification | "
              "template injection |", "|---:|---|---|---|---:|---:|:---:|---:|---:|---|"]
    for r in report["results"][:25]:
        v = r.get("verify") or {}
        flip = "**yes**" if v.get("flip") else ("no" if v else "")
        amp = f"{v['amplification']:.3g}" if "amplification" in v else ""
        beats = f"{v['null']['beaten']}/{v['null']['n']}" if v.get("null") else ""
        z = f"{r['z']:.1f}" if r.get("z") is not None else ""
        lines.append(f"| {r['rank']} | {md_cell(repr(r['text']))} | {md_cell(r['token_ids'])} | {r['route']} | "
                     f"{r['score']:.4g} | {z} | {flip} | {beats} | {amp} | "
                     f"{md_cell(', '.join(r.get('template_pieces') or []))} |")
    return "\n".join(lines) + "\n"
