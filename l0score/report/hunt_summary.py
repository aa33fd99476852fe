"""A hunt's report as files: report.json (as l0score.hunt_report wrote it), summary.md and the HTML page."""
from __future__ import annotations

import json
from pathlib import Path

from .markdown import md_cell


def write_hunt_files(report: dict, out) -> dict:
    """Write a hunt's report (l0score.hunt_report decides its content) as out/report.json and
    out/summary.md; returns the report with its file names. The page follows (`write_hunt_page`)."""
    out = Path(out)
    (out / "summary.md").write_text(markdown(report))
    report["files"] = _files(out)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def write_hunt_page(report: dict, out) -> dict:
    """The HTML page of what out holds (its Layer-0 heatmaps from out/heatmaps.npz when there), its name
    added to report.json; a page that cannot be rendered is recorded there instead."""
    out = Path(out)
    try:
        from .html import write_report

        report["files"].update(_files(out))  # the heatmaps written since
        report["files"]["html"] = str(Path(write_report(out)).relative_to(out))
    except Exception as exc:  # noqa: BLE001 - the page is a convenience: report.json and summary.md stand alone
        report["html_error"] = f"{type(exc).__name__}: {exc}"
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def read_verify_rows(path: Path) -> dict:
    """verify's measures of each candidate in its report.json, by token ids ({} without one)."""
    if not path.exists():
        return {}
    rep = json.loads(path.read_text())
    keys = ("flip", "flip_rate", "amplification", "kl", "js", "consistency", "null", "contexts")
    return {tuple(r["token_ids"]): {k: r[k] for k in keys if k in r} for r in rep["results"]}


def _files(out: Path) -> dict:
    names = {"analysis": "analysis/analysis.json", "profile": "profile/profile.json", "pool": "layer0/pool.json",
             "verify": "verify/report.json", "summary": "summary.md", "heatmaps": "heatmaps.json"}
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
