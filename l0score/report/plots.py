"""PNG figures: dS heatmaps of one candidate in its template."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from ..core.reference import full_logits


def plot_delta_heatmaps(scorer, cand_ids: list[int], path: str, n_heads: int = 4) -> None:
    """dS = S_dormant - S_base over the whole sequence for the heads with the largest |dS|."""
    tpl = scorer.template
    ids = torch.tensor(list(tpl.prefix_ids) + list(cand_ids) + list(tpl.suffix_ids))
    ds = (full_logits(scorer.pair.dormant, ids) - full_logits(scorer.pair.base, ids)).numpy()
    t_len = len(ids)
    ds = np.where(np.tril(np.ones((t_len, t_len), dtype=bool)), ds, np.nan)
    heads = list(scorer.heads)
    strongest = sorted(heads, key=lambda h: -np.nanmax(np.abs(ds[h])))[:n_heads]
    p, c = len(tpl.prefix_ids), len(cand_ids)
    fig, axes = plt.subplots(1, len(strongest), figsize=(4.2 * len(strongest), 4), squeeze=False)
    lim = np.nanmax(np.abs(ds[strongest]))
    for ax, h in zip(axes[0], strongest):
        im = ax.imshow(ds[h], cmap="RdBu_r", vmin=-lim, vmax=lim)
        for edge in (p - 0.5, p + c - 0.5):
            ax.axhline(edge, color="k", lw=0.6)
            ax.axvline(edge, color="k", lw=0.6)
        ax.set_title(f"head {h}: max |dS| {np.nanmax(np.abs(ds[h])):.3f}")
        ax.set_xlabel("key position j")
        ax.set_ylabel("query position i")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="dS")
    text = scorer.pair.tokenizer.decode(cand_ids) if scorer.pair.tokenizer is not None else str(cand_ids)
    fig.suptitle(f"dS for candidate {text!r} (lines: candidate span)")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
