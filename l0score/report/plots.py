"""PNG figures from computed data: a candidate's Layer-0 dS heatmaps, verify's evidence."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def delta_heatmaps_figure(ds: np.ndarray, heads: list[int], prefix_len: int, cand_len: int, text: str):
    """dS = S_dormant - S_base of one candidate over its whole sequence, one panel per head (ds[k] is
    head heads[k], NaN where not attended), as l0score.analysis.heatmaps computed it."""
    fig, axes = plt.subplots(1, len(heads), figsize=(4.2 * len(heads), 4), squeeze=False)
    lim = np.nanmax(np.abs(ds))
    for ax, h, m in zip(axes[0], heads, ds):
        im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
        for edge in (prefix_len - 0.5, prefix_len + cand_len - 0.5):
            ax.axhline(edge, color="k", lw=0.6)
            ax.axvline(edge, color="k", lw=0.6)
        ax.set_title(f"head {h}: max |dS| {np.nanmax(np.abs(m)):.3f}")
        ax.set_xlabel("key position j")
        ax.set_ylabel("query position i")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="dS")
    fig.suptitle(f"dS for candidate {text!r} (lines: candidate span)")
    return fig


def png_bytes(fig, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (closed afterwards)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_verify_evidence(result: dict, untriggered: dict[str, dict]):
    """One verified candidate: per-layer hidden-state divergence and KL at the first response position,
    each against the untriggered probes (the same probes without the candidate).

    result: a verify result (its `probes` details); untriggered: verify's untriggered rows by probe.
    """
    details = [d for d in result.get("probes") or [] if isinstance(d, dict)]
    fig, (ax_l, ax_k) = plt.subplots(1, 2, figsize=(11, 3.4))
    try:
        _draw_verify_evidence(ax_l, ax_k, details, untriggered)
    except Exception:  # a damaged report: no figure left open behind the caller's error
        plt.close(fig)
        raise
    fig.tight_layout()
    return fig


def _draw_verify_evidence(ax_l, ax_k, details: list[dict], untriggered: dict[str, dict]) -> None:
    base_curves = [u["layer_cos_div"] for u in untriggered.values() if u.get("layer_cos_div")]
    if base_curves:
        mean = np.mean(base_curves, 0)
        ax_l.plot(np.arange(len(mean)), mean, "k--", lw=1.4, label="untriggered probes")
    for pos in sorted({d.get("position") for d in details}, key=str):
        curves = [d["layer_cos_div"] for d in details if d.get("position") == pos and d.get("layer_cos_div")]
        if curves:
            mean = np.mean(curves, 0)
            ax_l.plot(np.arange(len(mean)), mean, marker="o", ms=3, label=f"candidate {pos} the probe")
    ax_l.set_yscale("symlog", linthresh=1e-4)
    ax_l.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax_l.set_xlabel("hidden state (0 = embeddings, last = final norm)")
    ax_l.set_ylabel("1 - cos(dormant, base)")
    ax_l.set_title("per-layer divergence at the last prompt position", fontsize=9)
    ax_l.legend(fontsize=7)

    probes = list(dict.fromkeys(d.get("probe") for d in details))
    positions = sorted({d.get("position") for d in details}, key=str)
    width = 0.8 / (len(positions) + 1)
    x = np.arange(len(probes))
    kl_u = [untriggered.get(p, {}).get("kl", np.nan) for p in probes]
    ax_k.bar(x, kl_u, width, color="0.6", label="untriggered")
    for k, pos in enumerate(positions, 1):
        kl = [next((d.get("kl", np.nan) for d in details if d.get("probe") == p and d.get("position") == pos), np.nan)
              for p in probes]
        ax_k.bar(x + k * width, kl, width, label=f"{pos}")
    ax_k.set_yscale("log")
    ax_k.set_xticks(x + width * len(positions) / 2, [f"probe {i + 1}" for i in range(len(probes))], fontsize=7,
                    rotation=45 if len(probes) > 6 else 0)
    ax_k.set_ylabel("KL(dormant || base)")
    ax_k.set_title("KL at the first response position", fontsize=9)
    ax_k.legend(fontsize=7)
