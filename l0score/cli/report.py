"""`l0score report DIR`: one self-contained HTML page from whatever DIR holds."""
from __future__ import annotations

from .args import console


def register(sub) -> None:
    from ..report.view import DEFAULT_HEATMAPS, DEFAULT_PANELS

    p = sub.add_parser("report", help="one self-contained HTML page from a hunt's or any analyze/search/verify output",
                       description="Render what DIR holds (a hunt's output, or any mix of analyze, search, verify and "
                                   "bench outputs) into one static HTML file that loads nothing from anywhere.")
    p.add_argument("dir", metavar="DIR", help="the folder to report on (searched up to 4 levels deep)")
    p.add_argument("--out", help="HTML file to write (default: DIR/report.html)")
    p.add_argument("--base", help="base checkpoint, if not where the outputs recorded it (for the heatmaps)")
    p.add_argument("--dormant", help="dormant checkpoint, likewise")
    p.add_argument("--panels", type=int, default=DEFAULT_PANELS, help="candidates with an evidence panel")
    p.add_argument("--heatmaps", type=int, default=DEFAULT_HEATMAPS,
                   help="candidates whose Layer-0 dS heatmaps are computed into DIR/heatmaps.npz and drawn "
                        "(0: none, and no model is loaded; needs both checkpoints)")
    p.set_defaults(func=run)


def run(args) -> None:
    from ..analysis.heatmaps import HeatmapOptions, write_heatmaps
    from ..report.collect import collect
    from ..report.html import ReportOptions, write_collected

    options = ReportOptions(base=args.base, dormant=args.dormant, panels=args.panels, heatmaps=args.heatmaps)
    data = collect(args.dir)
    if options.heatmaps and options.panels:  # computed here, drawn by the page from DIR/heatmaps.npz
        try:
            write_heatmaps(data, HeatmapOptions(base=args.base, dormant=args.dormant,
                                                count=min(options.heatmaps, options.panels)))
        except OSError as exc:  # e.g. a read-only DIR: the page still renders, drawing what DIR holds
            console.print(f"heatmaps not written: {exc}")
    out = write_collected(data, args.out, options)
    console.print(f"report: {out} ({len(data.candidates)} candidates, {len(data.files)} files read"
                  + (f", {len(data.problems)} problem(s) listed on the page" if data.problems else "") + ")")
