"""Layer-0 dS heatmaps as data, computed here so that report/ only draws files.

dS = S_dormant - S_base over one candidate's whole sequence in its template (the torch reference,
core/reference.py), for the heads with the largest |dS|. `write_heatmaps` computes them for the
candidates a report page shows and writes OUT/heatmaps.npz (per candidate: ids, heads, matrices)
with a short JSON index, OUT/heatmaps.json (format in docs/report.md), which report/view.py reads.
The hunt (hunt_report.py) and `l0score report` call it; without the files the page says so.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.reference import full_logits
from ..report.collect import ReportData
from ..report.view import DEFAULT_HEATMAPS, HEATMAPS_FORMAT, HEATMAPS_INDEX, checkpoints, heatmap_template
from ..scorer import Scorer

HEATMAPS_NPZ = "heatmaps.npz"
HEATMAPS_VERSION = 1
N_HEADS = 4  # heads per candidate: the most-changed ones
# what a checkpoint that cannot be loaded or a template that does not fit raises (CheckpointError: ValueError)
LOAD_ERRORS = (ValueError, TypeError, KeyError, IndexError, OSError, RuntimeError)


@dataclass
class Heatmap:
    """One candidate's dS in its template: ds[k] is head heads[k], NaN above the diagonal (not attended)."""

    token_ids: list[int]
    text: str
    heads: list[int]
    ds: np.ndarray  # float32 [len(heads), T, T], T = prefix + candidate + suffix
    prefix_len: int

    def png(self) -> bytes:
        """Drawn as the report page draws it (report.plots)."""
        from ..report.plots import delta_heatmaps_figure, png_bytes

        fig = delta_heatmaps_figure(self.ds, self.heads, self.prefix_len, len(self.token_ids), self.text)
        return png_bytes(fig, dpi=110)


@dataclass
class HeatmapOptions:
    """What `write_heatmaps` computes (defaults in brackets).

    base, dormant: checkpoint directories, overriding the paths the outputs recorded [as recorded]
    count: the first `count` candidates of the page (its ranked order) [5]
    n_heads: heads per candidate, the largest max |dS| first [4]
    """

    base: str | None = None
    dormant: str | None = None
    count: int = DEFAULT_HEATMAPS
    n_heads: int = N_HEADS

    def __post_init__(self):
        if self.count < 0 or self.n_heads < 1:
            raise ValueError("count must be >= 0 and n_heads >= 1")


@dataclass
class HeatmapsResult:
    """The files written and what they hold; `note` says why some or all candidates have none."""

    index: Path
    npz: Path
    heatmaps: list[Heatmap] = field(default_factory=list)
    note: str | None = None


def candidate_heatmap(scorer, token_ids: list[int], n_heads: int = N_HEADS) -> Heatmap:
    """dS of one candidate in the scorer's template, for its `n_heads` most-changed heads (of scorer.heads)."""
    tpl = scorer.template
    ids = torch.tensor(list(tpl.prefix_ids) + list(token_ids) + list(tpl.suffix_ids))
    ds = (full_logits(scorer.pair.dormant, ids) - full_logits(scorer.pair.base, ids)).numpy()
    t_len = len(ids)
    ds = np.where(np.tril(np.ones((t_len, t_len), dtype=bool)), ds, np.nan)
    strongest = sorted(scorer.heads, key=lambda h: -np.nanmax(np.abs(ds[h])))[:n_heads]
    tok = scorer.pair.tokenizer
    text = tok.decode(token_ids) if tok is not None else str(token_ids)
    return Heatmap(list(token_ids), text, strongest, ds[strongest].astype(np.float32), len(tpl.prefix_ids))


def write_heatmaps(data: ReportData, options: HeatmapOptions) -> HeatmapsResult:
    """The heatmaps of the first `options.count` candidates of DATA (what `report.collect.collect` read),
    in the Layer-0 search's template (else chat, else raw: `Scorer.for_heatmaps`), written to
    DATA.root/heatmaps.npz and heatmaps.json; unreachable checkpoints or a load error become the
    index's note, which the page shows. Loads the pair only when there is a candidate to draw."""
    root = Path(data.root)
    result = HeatmapsResult(root / HEATMAPS_INDEX, root / HEATMAPS_NPZ)
    cands = data.candidates[: options.count]
    ckpts = checkpoints(data, options.base, options.dormant)
    paths = {c["role"]: c["path"] for c in ckpts}
    if not all(c["reachable"] for c in ckpts):
        result.note = ("Layer-0 dS heatmaps need both checkpoints; not reachable here: "
                       + ", ".join(f"{c['role']} {c['path'] or '(path not recorded)'}" for c in ckpts
                                   if not c["reachable"])
                       + " (pass --base/--dormant to point at them)")
    elif cands:
        try:
            scorer = Scorer.for_heatmaps(paths["base"], paths["dormant"], heatmap_template(data))
            for c in cands:
                result.heatmaps.append(candidate_heatmap(scorer, c.token_ids, options.n_heads))
        except LOAD_ERRORS as exc:
            result.note = f"Layer-0 dS heatmaps not drawn: {exc}"
    _write(result, paths)
    return result


def _write(result: HeatmapsResult, paths: dict) -> None:
    """npz first, then the index that names it: a reader that finds the index finds its arrays."""
    arrays = {}
    for k, h in enumerate(result.heatmaps):
        arrays[f"c{k}_ids"] = np.asarray(h.token_ids, dtype=np.int64)
        arrays[f"c{k}_heads"] = np.asarray(h.heads, dtype=np.int64)
        arrays[f"c{k}_ds"] = h.ds
    with open(result.npz, "wb") as f:
        np.savez_compressed(f, **arrays)
    index = {"format": HEATMAPS_FORMAT, "version": HEATMAPS_VERSION, "base": paths.get("base"),
             "dormant": paths.get("dormant"), "npz": HEATMAPS_NPZ, "note": result.note,
             "candidates": [{"key": f"c{k}", "token_ids": h.token_ids, "text": h.text, "heads": h.heads,
                             "prefix_len": h.prefix_len, "length": int(h.ds.shape[-1])}
                            for k, h in enumerate(result.heatmaps)]}
    result.index.write_text(json.dumps(index, indent=1))
