"""`l0score report DIR`: one static, self-contained HTML page from whatever DIR holds.

`collect` reads the outputs, `view` turns them into what the page shows (figures inlined as PNG
data URIs), and templates/report.html.j2 lays it out, rendered by jinja2 with autoescaping on, so
every model-produced or user-supplied string (candidate text, generations, probes, paths) reaches
the page as text. The page loads nothing: its style sheet, script and images are all inside it,
and its Content-Security-Policy forbids any other source.
"""
from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from .collect import ReportData, collect
from .text import fmt_num, visible
from .view import DEFAULT_HEATMAPS, DEFAULT_PANELS, ReportOptions, build_view

__all__ = ["ReportOptions", "write_report", "render", "register_cli"]


def write_report(directory, out=None, options: ReportOptions | None = None, **kwargs) -> Path:
    """Render DIR's outputs into one HTML file; returns its path (default DIR/report.html).

    kwargs are `ReportOptions` fields. Raises FileNotFoundError for a missing DIR and ValueError
    when DIR holds nothing l0score wrote; damaged files are listed on the page instead.
    """
    return _write(collect(directory), out, options or ReportOptions(**kwargs))


def _write(data: ReportData, out, options: ReportOptions) -> Path:
    out = Path(out) if out is not None else data.root / "report.html"
    html = render(data, options)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out


def render(data: ReportData, options: ReportOptions) -> str:
    env = Environment(loader=PackageLoader("l0score.report", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["visible"] = visible
    env.filters["num"] = fmt_num
    return env.get_template("report.html.j2").render(**build_view(data, options))


# ------------------------------------------------------------------------------------------------
# CLI


def register_cli(sub) -> None:
    p = sub.add_parser("report", help="one self-contained HTML page from a hunt's or any analyze/search/verify output",
                       description="Render what DIR holds (a hunt's output, or any mix of analyze, search, verify and "
                                   "bench outputs) into one static HTML file that loads nothing from anywhere.")
    p.add_argument("dir", metavar="DIR", help="the folder to report on (searched up to 4 levels deep)")
    p.add_argument("--out", help="HTML file to write (default: DIR/report.html)")
    p.add_argument("--base", help="base checkpoint, if not where the outputs recorded it (for the heatmaps)")
    p.add_argument("--dormant", help="dormant checkpoint, likewise")
    p.add_argument("--panels", type=int, default=DEFAULT_PANELS, help="candidates with an evidence panel")
    p.add_argument("--heatmaps", type=int, default=DEFAULT_HEATMAPS,
                   help="candidates whose Layer-0 dS heatmaps are drawn (0: none; needs both checkpoints)")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> None:
    from ..cli_args import console

    options = ReportOptions(base=args.base, dormant=args.dormant, panels=args.panels, heatmaps=args.heatmaps)
    data = collect(args.dir)
    out = _write(data, args.out, options)
    console.print(f"report: {out} ({len(data.candidates)} candidates, {len(data.files)} files read"
                  + (f", {len(data.problems)} problem(s) listed on the page" if data.problems else "") + ")")
