"""The profile's figure: per-prompt KL, the most up-weighted tokens, and the two token rankings compared."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def plot_profile(result: dict, path, top: int = 20) -> None:
    """Three panels from a profile() result: the per-prompt KL at the first response position (probes
    alone vs with a random candidate), the top tokens' reply z-scores, and reply z against the
    hidden-state projection for every token written to ``tokens``."""
    fig, (ax_k, ax_t, ax_s) = plt.subplots(1, 3, figsize=(15, 4))
    prompts = result["prompts"]
    for kind, color in (("candidate", "C0"), ("probe", "C3")):
        kl = np.array([p["kl_first"] for p in prompts if p["kind"] == kind])
        if len(kl):
            ax_k.hist(np.log10(np.maximum(kl, 1e-12)), bins=30, alpha=0.6, color=color,
                      label=f"{kind} ({len(kl)})")
    ax_k.set_xlabel("log10 KL(dormant || base), first response position")
    ax_k.set_ylabel("prompts")
    ax_k.legend(fontsize=7)
    ax_k.set_title("per-prompt KL", fontsize=9)

    rows = result["tokens"][:top][::-1]
    ax_t.barh(np.arange(len(rows)), [r["z"] for r in rows], color="C2")
    ax_t.set_yticks(np.arange(len(rows)), [repr(r["text"]) for r in rows], fontsize=7)
    ax_t.set_xlabel("z of log p_dormant - log p_base (reply positions)")
    ax_t.set_title(f"top {len(rows)} up-weighted tokens", fontsize=9)

    toks = result["tokens"]
    ax_s.scatter([r["hidden_proj"] for r in toks], [r["z"] for r in toks], s=6, alpha=0.5)
    for r in toks[:8]:
        ax_s.annotate(repr(r["text"]), (r["hidden_proj"], r["z"]), fontsize=7)
    ax_s.set_xlabel("mean hidden-state difference . dormant unembedding")
    ax_s.set_ylabel("reply z")
    ax_s.set_title("output shift vs hidden-state shift", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
