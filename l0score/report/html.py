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
from .view import ReportOptions, build_view

__all__ = ["ReportOptions", "write_report", "write_collected", "render"]


def write_report(directory, out=None, options: ReportOptions | None = None, **kwargs) -> Path:
    """Render DIR's outputs into one HTML file; returns its path (default DIR/report.html).

    kwargs are `ReportOptions` fields. Raises FileNotFoundError for a missing DIR and ValueError
    when DIR holds nothing l0score wrote; damaged files are listed on the page instead.
    """
    return write_collected(collect(directory), out, options or ReportOptions(**kwargs))


def write_collected(data: ReportData, out, options: ReportOptions) -> Path:
    """Render what `collect` read into one HTML file (default DATA.root/report.html); returns its path."""
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
