"""What a hunt reports, decided here and written to report.json: the ranked candidates with verify's
measures and their Layer-0 scores, the funnel, the pool, the route and every stage's result, and the
Layer-0 dS heatmaps of the candidates the page shows (heatmaps.npz, analysis/heatmaps.py).
report/hunt_summary.py only renders them (summary.md, report.html); nothing in report/ ranks or loads
a model."""
from __future__ import annotations

import time

from .analysis.heatmaps import HeatmapOptions, write_heatmaps
from .hunt_stages import stages_to_json
from .report.collect import collect
from .report.hunt_summary import read_verify_rows, write_hunt_files, write_hunt_page


def write_hunt_report(hunt) -> dict:
    """Rank what the hunt found, attach verify's measures, write report.json and summary.md, the
    heatmaps of the page's first candidates, and the HTML page; returns the report."""
    report = write_hunt_files(build_report(hunt), hunt.out)
    try:  # on the files just written, so the heatmaps are of the candidates the page shows
        write_heatmaps(collect(hunt.out), HeatmapOptions(base=str(hunt.base), dormant=str(hunt.dormant)))
    except Exception as exc:  # noqa: BLE001 - a convenience like the page: report.json and summary.md stand
        report["heatmaps_error"] = f"{type(exc).__name__}: {exc}"
    return write_hunt_page(report, hunt.out)


def build_report(hunt) -> dict:
    """The hunt's summary: when and on what it ran, the funnel, the ranked results, the pool (ids and
    texts) and every stage's typed result as hunt.json records it (route, targets, search runs,
    minimized candidates), so report.json alone says what the hunt did."""
    stages = hunt.stages
    pool = stages["layer0"].pool if "layer0" in stages else []
    results = rank_results(hunt)
    return {
        "format": hunt.state["format"], "version": hunt.state["version"], "created": hunt.state["created"],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "base": hunt.base, "dormant": hunt.dormant,
        "config": hunt.state["options"], "complete": all(s in stages for s in hunt.expected_stages()),
        "route": hunt.route(),
        "funnel": [{"stage": name, "candidates": rec.candidates, "seconds": rec.seconds, "note": rec.note}
                   for name, rec in stages.items()],
        "results": results,
        "pool": {"size": len(pool), "token_ids": pool,
                 "texts": hunt.fm().tokenizer.batch_decode([[t] for t in pool]) if pool else []},
        "stages": stages_to_json(stages),
    }


def rank_results(hunt) -> list[dict]:
    """Verified clean flips first: those that do not contain a shorter flip (one that does adds nothing
    but tokens), by flip rate, then amplification (a 1-token string flipping 4 of 16 prompts must not
    outrank the trigger flipping 16 of 16 because it is shorter or its untriggered KL is near zero);
    then the rest of the verified (a flip that holds a piece of the chat
    template among them: it forges a turn, which says nothing about a backdoor); then by objective score."""
    from .core.template import template_structure
    from .core.token_lists import contains

    rows = hunt.collect()
    verified = read_verify_rows(hunt.out / "verify" / "report.json")
    tok = hunt.fm().tokenizer if rows else None
    structure = template_structure(tok)
    for r in rows:
        r.setdefault("text", tok.decode(r["token_ids"]))
        r["objective"] = "full"
        r["verify"] = verified.get(tuple(r["token_ids"]))
        r["template_pieces"] = structure.injection(r["token_ids"], r["text"])
        r["template_injection"] = bool(r["template_pieces"])

    def clean_flip(r) -> bool:
        return bool((r["verify"] or {}).get("flip")) and not r["template_injection"]

    flips = [r["token_ids"] for r in rows if clean_flip(r)]

    def key(r):
        v, flip = r["verify"] or {}, clean_flip(r)
        padded = flip and any(len(f) < len(r["token_ids"]) and contains(r["token_ids"], f) for f in flips)
        return (r["verify"] is None, not flip, padded, -v.get("flip_rate", 0.0) if flip else 0.0,
                -v.get("amplification", 0.0), -r["score"])

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
    from .scorer import Scorer

    scorer = Scorer.from_pretrained(hunt.base, hunt.dormant, template="chat")
    scores = scorer.score_batch([r["token_ids"] for r in rows])
    for b, r in enumerate(rows):
        r["layer0"] = {"max_abs": float(scores.max_abs[b]), "kl": float(scores.kl[b])}
