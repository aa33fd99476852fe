"""The report's view: what DIR's outputs (`collect.ReportData`) show on the page, as plain data.

Every section is a function from the collected outputs to dicts of strings, numbers and Markup
built by `text`; figures are drawn here (PNG data URIs) so the template only lays them out.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .collect import Candidate, ReportData, _modified
from .text import diff_segments, fmt_num, png_uri, visible

DEFAULT_PANELS = 20  # candidates with an evidence panel (the table lists every candidate)
DEFAULT_HEATMAPS = 5  # of those, candidates whose Layer-0 dS heatmaps are drawn (needs the checkpoints)
HEATMAPS_INDEX, HEATMAPS_FORMAT = "heatmaps.json", "l0score-heatmaps"  # written by l0score.analysis.heatmaps


@dataclass
class ReportOptions:
    """What `write_report` draws (defaults in brackets).

    base, dormant: checkpoint directories, overriding the paths recorded in the outputs (for
        outputs moved from another machine) [as recorded]
    panels: candidates, in ranked order, that get an evidence panel [20]
    heatmaps: of those, how many get Layer-0 dS heatmaps, drawn from DIR/heatmaps.npz (written by the
        hunt and `l0score report`: l0score.analysis.heatmaps); 0 = none [5]
    """

    base: str | None = None
    dormant: str | None = None
    panels: int = DEFAULT_PANELS
    heatmaps: int = DEFAULT_HEATMAPS

    def __post_init__(self):
        if self.panels < 0 or self.heatmaps < 0:
            raise ValueError("panels and heatmaps must be >= 0")


def build_view(data: ReportData, options: ReportOptions) -> dict:
    """Everything the template shows, as plain strings, numbers and Markup (figures drawn here)."""
    ckpts = checkpoints(data, options.base, options.dormant)
    heatmaps = HeatmapSource(data)
    return {
        "title": f"l0score report: {data.root.name}",
        "root": str(data.root),
        "generated": datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "version": _version(),
        "checkpoints": ckpts,
        "template": _template_text(data),
        "hunt": _hunt_view(data),
        "files": [{"kind": k, "path": data.rel(p), "modified": m} for k, p, m in data.files],
        "problems": data.problems,
        "missing": data.missing(),
        "funnel": _funnel(data),
        "columns": COLUMNS,
        "rows": [_row(i, c) for i, c in enumerate(data.candidates)],
        "panels": [_panel(i, c, data, heatmaps if i < options.heatmaps else None)
                   for i, c in enumerate(data.candidates[: options.panels])],
        "n_candidates": len(data.candidates),
        "heatmap_note": heatmaps.note,
        "searches": _searches(data),
        "verifies": [_verify_view(v, data) for v in data.verifies],
        "base_check": _base_check(data),
        "analysis": _analysis(data),
        "profile": _profile(data),
        "pool": _pool(data),
        "benches": [_bench(p, res, png, data) for p, res, png in data.benches],
    }


def _file_uri(path: Path | None) -> str | None:
    try:
        return png_uri(path.read_bytes()) if path is not None and path.is_file() else None
    except OSError:
        return None


def _num(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v else None


def _list(v) -> list:
    return v if isinstance(v, list) else []


def _dict(v) -> dict:
    return v if isinstance(v, dict) else {}


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("l0score")
    except PackageNotFoundError:
        return "unknown"


# ------------------------------------------------------------------------------------------------
# header


def checkpoints(data: ReportData, base: str | None = None, dormant: str | None = None) -> list[dict]:
    """Both checkpoints: the path given, else the one the outputs recorded; reachable when its
    config.json is (its fingerprint and architecture then)."""
    recorded = {"base": None, "dormant": None}
    sources = [data.hunt, data.analysis] + [v.data.get("config") for v in data.verifies]
    for role in recorded:
        recorded[role] = next((s[role] for s in sources if isinstance(s, dict) and isinstance(s.get(role), str)), None)
    given = {"base": base, "dormant": dormant}
    out = []
    for role in ("base", "dormant"):
        path = given[role] or recorded[role]
        info = {"role": role, "path": path, "recorded": recorded[role] if given[role] else None,
                "reachable": False, "fingerprint": None, "summary": None}
        config = _find_config(path, data.root)
        try:
            raw = config.read_bytes() if config is not None else None
        except OSError:
            raw = None
        if raw is not None:
            info["path"] = str(config.parent)
            info["reachable"] = True
            info["fingerprint"] = hashlib.sha256(raw).hexdigest()[:12]
            try:
                cfg = json.loads(raw)
                cfg = cfg if isinstance(cfg, dict) else {}
                info["summary"] = ", ".join(f"{k} {cfg[k]}" for k in (
                    "model_type", "num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
                    "vocab_size", "torch_dtype") if k in cfg)
            except ValueError:
                info["summary"] = "config.json is not valid JSON"
        out.append(info)
    return out


def _find_config(path: str | None, root: Path) -> Path | None:
    """config.json of a recorded checkpoint: a relative path is tried from here, then from DIR; a hub id
    in the local Hugging Face cache (never downloaded)."""
    if not path:
        return None
    for base in (Path.cwd(), root):
        config = base / Path(path).expanduser() / "config.json"
        if config.is_file():
            return config.resolve()
    if path.count("/") != 1 or path.startswith((".", "/", "~")):
        return None
    from huggingface_hub import try_to_load_from_cache

    try:  # a file lookup in the cache, as core.checkpoint.resolve_model_dir does for loading
        config = try_to_load_from_cache(path, "config.json")
    except (ValueError, OSError):
        return None
    return Path(config) if isinstance(config, str) and Path(config).is_file() else None


def heatmap_template(data: ReportData):
    """The Layer-0 search's template (its checkpoint records prefix + [-1] + suffix), else None."""
    for sf in data.searches:
        ids = sf.options.get("template") if sf.stage == "layer0" else None
        if isinstance(ids, list) and ids.count(-1) == 1 and all(isinstance(t, int) for t in ids):
            cut = ids.index(-1)
            return ids[:cut], ids[cut + 1:]
    return None


def _template_text(data: ReportData) -> str:
    parts = []
    tpl = _get(data.hunt, "config", "template")
    if tpl is not None:
        parts.append(f"hunt: {tpl}")
    t = heatmap_template(data)
    if t is not None:
        parts.append(f"Layer-0 search: {len(t[0])}-token prefix + candidate + {len(t[1])}-token suffix")
    for v in data.verifies:
        cfg = _dict(v.data.get("config"))
        if cfg:
            sysmsg = cfg.get("system")
            parts.append(f"verify: chat template, {'system ' + repr(sysmsg) if sysmsg else 'its default system prompt'}"
                         f", candidate {' / '.join(map(str, _list(cfg.get('positions'))))} the probe")
    return "; ".join(dict.fromkeys(parts)) or "not recorded"


def _hunt_view(data: ReportData) -> dict | None:
    if data.hunt is None:
        return None
    cfg = data.hunt.get("config") if isinstance(data.hunt.get("config"), dict) else {}
    return {"created": data.hunt.get("created"), "finished": data.hunt.get("finished"),
            "complete": data.hunt.get("complete") is not False, "path": data.rel(data.hunt_path),
            "config": [(k, _short_json(v)) for k, v in cfg.items()]}


def _short_json(v, limit: int = 300) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _funnel(data: ReportData) -> list[dict]:
    """The hunt's own funnel, or one assembled from the stage outputs present."""
    if data.hunt is not None:
        return [{"stage": str(f.get("stage")), "candidates": _num(f.get("candidates")), "seconds": _num(f.get("seconds")),
                 "note": str(f.get("note") or "")} for f in data.hunt.get("funnel", []) if isinstance(f, dict)]
    rows = []
    if data.analysis is not None:
        rows.append({"stage": "analyze", "candidates": None, "seconds": _num(data.analysis.get("seconds")),
                     "note": f"{len(_list(data.analysis.get('seed_tokens')))} seed tokens, focus heads "
                             f"{data.analysis.get('focus_heads')}"})
    for sf in data.searches:
        rows.append({"stage": f"{'Layer-0' if sf.stage == 'layer0' else 'full-model'} search "
                              f"({sf.options.get('driver') or sf.records[0].get('driver') or '?'})",
                     "candidates": sf.used, "seconds": sf.seconds,
                     "note": f"{len(sf.records)} kept in {data.rel(sf.path)}"})
    for v in data.verifies:
        cfg = _dict(v.data.get("config"))
        rows.append({"stage": "verify", "candidates": len(_list(v.data.get("results"))),
                     "seconds": _num(cfg.get("seconds")), "note": f"{cfg.get('n_prompts', '?')} prompts"})
    return rows


# ------------------------------------------------------------------------------------------------
# ranked table

COLUMNS = [
    ("rank", "#", "order: the hunt's ranking, then verify's, then search scores"),
    ("text", "candidate", "text with visible whitespace (␣ space, ⏎ newline) and special tokens"),
    ("ids", "ids", "token ids"),
    ("found", "found by", "which outputs hold this candidate"),
    ("score", "score", "the score of the stage that ranked it (objective in the tooltip)"),
    ("z", "z", "score against random candidates of the same length"),
    ("l0_max_abs", "L0 max|dS|", "Layer-0 max |S_dormant - S_base|"),
    ("l0_kl", "L0 KL", "Layer-0 attention KL summed over heads and rows"),
    ("kl", "KL 1st resp.", "full models: KL(dormant || base) at the first response position, mean over prompts"),
    ("amplification", "ampl.", "mean triggered KL / mean untriggered KL"),
    ("flip_rate", "flip rate", "share of prompts where the dormant's reply departs"),
    ("flip", "flip", "verify's verdict"),
]


def _row(i: int, c: Candidate) -> dict:
    h, l0, fm, v = c.hunt or {}, c.layer0 or {}, c.full or {}, c.verify or {}
    hv = h.get("verify") if isinstance(h.get("verify"), dict) else {}
    hl0 = h.get("layer0") if isinstance(h.get("layer0"), dict) else {}
    ranked_by = h or fm or l0
    objective = ranked_by.get("objective") or (f"{'Layer-0 ' if ranked_by is l0 else ''}"
                                                f"{ranked_by.get('driver', '')}").strip()
    flip = v.get("flip", hv.get("flip"))
    values = {
        "rank": i + 1,
        "score": _num(ranked_by.get("score")),
        "z": _num(ranked_by.get("z")),
        "l0_max_abs": _num(l0.get("max_abs", hl0.get("max_abs"))),
        "l0_kl": _num(l0.get("kl", hl0.get("kl"))),
        "kl": _num(v.get("kl", hv.get("kl"))),
        "amplification": _num(v.get("amplification", hv.get("amplification"))),
        "flip_rate": _num(v.get("flip_rate", hv.get("flip_rate"))),
    }
    cells = {k: {"v": "" if val is None else val, "show": fmt_num(val)} for k, val in values.items()}
    cells["text"] = {"v": c.text or "", "show": visible(c.text)}
    cells["ids"] = {"v": " ".join(map(str, c.token_ids)), "show": ", ".join(map(str, c.token_ids))}
    found = c.route or ", ".join(dict.fromkeys(f.split(" (")[0] for f in c.found_in))
    cells["found"] = {"v": found, "show": found}
    cells["flip"] = {"v": "" if not isinstance(flip, bool) else int(flip), "show": fmt_num(flip) if isinstance(flip, bool) else "–"}
    return {"anchor": f"c{i + 1}", "cells": cells, "flip": flip is True, "objective": objective,
            "search": f"{c.text or ''} {' '.join(map(str, c.token_ids))}"}


# ------------------------------------------------------------------------------------------------
# candidate panels


class HeatmapSource:
    """Layer-0 dS heatmaps drawn from DIR/heatmaps.json and the heatmaps.npz it names, which the hunt
    and `l0score report` compute (l0score.analysis.heatmaps); the report never loads a model."""

    def __init__(self, data: ReportData):
        self.entries: dict[tuple[int, ...], dict] = {}
        self.note = None
        index = Path(data.root) / HEATMAPS_INDEX
        if not index.is_file():
            self.note = ("No Layer-0 dS heatmaps: this directory holds no heatmaps.json (the hunt and "
                         "`l0score report` write it when both checkpoints are reachable)")
            return
        try:
            self._read(index)
        except (ValueError, TypeError, KeyError, OSError) as exc:  # zipfile.BadZipFile is an OSError
            self.entries = {}
            self.note = f"Layer-0 dS heatmaps not drawn: {data.rel(index)} unreadable ({exc})"
            data.problems.append(self.note)
            return
        data.files.append(("heatmaps", index, _modified(index)))

    def _read(self, index: Path) -> None:
        import numpy as np

        meta = json.loads(index.read_text())
        if not isinstance(meta, dict) or meta.get("format") != HEATMAPS_FORMAT or meta.get("version") != 1:
            raise ValueError(f"not an {HEATMAPS_FORMAT} index of version 1")
        self.note = meta.get("note") if isinstance(meta.get("note"), str) else None
        with np.load(index.parent / str(meta["npz"]), allow_pickle=False) as npz:
            for c in _list(meta.get("candidates")):
                k = c["key"]
                ds, heads, ids = npz[f"{k}_ds"], npz[f"{k}_heads"].tolist(), npz[f"{k}_ids"].tolist()
                if ds.ndim != 3 or ds.shape[0] != len(heads) or ds.shape[1] != ds.shape[2]:
                    raise ValueError(f"{k}: dS of shape {ds.shape} for {len(heads)} heads")
                self.entries[tuple(ids)] = {"ds": ds, "heads": heads, "prefix_len": int(c["prefix_len"]),
                                            "text": str(c.get("text"))}

    def draw(self, token_ids: list[int]) -> str | None:
        entry = self.entries.get(tuple(token_ids))
        if entry is None:
            return None
        from .plots import delta_heatmaps_figure, png_bytes

        fig = delta_heatmaps_figure(entry["ds"], entry["heads"], entry["prefix_len"], len(token_ids), entry["text"])
        return png_uri(png_bytes(fig, dpi=110))

    def missing_note(self) -> str:
        return self.note or "No Layer-0 dS heatmap of this candidate in heatmaps.npz"


def _panel(i: int, c: Candidate, data: ReportData, heatmaps: HeatmapSource | None) -> dict:
    panel = {"anchor": f"c{i + 1}", "rank": i + 1, "text": c.text, "ids": ", ".join(map(str, c.token_ids)),
             "found_in": c.found_in, "heatmap": None, "heatmap_note": None, "verify": None, "scores": []}
    for label, rec in (("hunt", c.hunt), ("Layer-0 search", c.layer0), ("full-model search", c.full)):
        if rec:
            shown = {k: rec[k] for k in ("objective", "score", "z", "max_abs", "kl", "driver", "step", "stage", "route",
                                         "file") if k in rec and not isinstance(rec[k], (dict, list))}
            panel["scores"].append((label, [(k, fmt_num(v) if not isinstance(v, str) else v) for k, v in shown.items()]))
    if heatmaps is not None:
        panel["heatmap"] = heatmaps.draw(c.token_ids)
        if panel["heatmap"] is None:
            panel["heatmap_note"] = heatmaps.missing_note()
    if c.verify is not None:
        panel["verify"] = _verify_panel(c.verify, c.verify_report, data)
    return panel


def _verify_panel(result: dict, report, data: ReportData) -> dict:
    from .plots import plot_verify_evidence, png_bytes

    untrig = report.untriggered
    prompts = []
    for d in _list(result.get("probes")):
        if not isinstance(d, dict):
            continue
        u = untrig.get(d.get("probe"), {}) if isinstance(d.get("probe"), str) else {}
        base_seg, dorm_seg = diff_segments(str(d.get("generation_base", "")), str(d.get("generation_dormant", "")))
        prompts.append({
            "probe": d.get("probe"), "position": d.get("position"), "kl": fmt_num(_num(d.get("kl"))),
            "kl_untriggered": fmt_num(_num(u.get("kl"))), "amplification": fmt_num(_num(d.get("amplification")), 3),
            "flip": d.get("flip") is True, "similarity_to_untriggered": fmt_num(_num(d.get("similarity_to_untriggered")), 2),
            "similarity_to_base": fmt_num(_num(d.get("similarity_to_base")), 2),
            "base": base_seg, "dormant": dorm_seg,
            "untriggered_base": u.get("generation_base"), "untriggered_dormant": u.get("generation_dormant"),
        })
    try:
        plot = png_uri(png_bytes(plot_verify_evidence(result, untrig)))
    except Exception as exc:  # noqa: BLE001 -- damaged data in any shape; the page says which figure is missing
        plot = None
        data.problems.append(f"{data.rel(report.path)}: evidence plot of {result.get('text')!r} not drawn ({exc})")
    summary = [(k, fmt_num(_num(result.get(k)), 4)) for k in ("kl", "kl_untriggered", "amplification", "js",
                                                            "top1_agreement", "flip_rate", "consistency")
               if k in result]
    return {"file": data.rel(report.path), "flip": result.get("flip") is True, "summary": summary,
            "plot": plot, "prompts": prompts}


# ------------------------------------------------------------------------------------------------
# stage sections


def _searches(data: ReportData) -> list[dict]:
    out = []
    for sf in data.searches:
        o = sf.options
        out.append({"path": data.rel(sf.path), "stage": "Layer-0" if sf.stage == "layer0" else "full model",
                    "records": len(sf.records), "used": fmt_num(sf.used), "seconds": fmt_num(_num(sf.seconds), 3),
                    "driver": o.get("driver") or sf.records[0].get("driver") or "–",
                    "objective": o.get("metric") or sf.records[0].get("objective") or "–",
                    "length": o.get("length") or "–", "pool": fmt_num(o.get("pool_size"))})
    return out


def _verify_view(v, data: ReportData) -> dict:
    cfg = v.data.get("config") if isinstance(v.data.get("config"), dict) else {}
    summary = v.data.get("summary") if isinstance(v.data.get("summary"), dict) else {}
    settings = [(k, _short_json(cfg[k])) for k in ("max_new_tokens", "decoding", "dtype", "device", "flip_threshold",
                                                   "flip_rate_threshold", "similarity", "seconds") if k in cfg]
    return {"path": data.rel(v.path), "settings": settings, "plot": _file_uri(v.path.with_suffix(".png")),
            "kl_untriggered": fmt_num(_num(summary.get("kl_untriggered"))),
            "untriggered": [{"probe": u.get("probe"), "kl": fmt_num(_num(u.get("kl"))),
                             "base": u.get("generation_base"), "dormant": u.get("generation_dormant")}
                            for u in v.untriggered.values()]}


def _analysis(data: ReportData) -> dict | None:
    a = data.analysis
    if a is None:
        return None
    l0 = a.get("layer0") if isinstance(a.get("layer0"), dict) else {}
    heads = [h for h in _list(l0.get("heads")) if isinstance(h, dict)]
    focus = {h for h in _list(a.get("focus_heads")) if isinstance(h, int)}
    plots = a.get("plots") if isinstance(a.get("plots"), dict) else {}
    figures, missing = [], []
    for key, caption in (("delta_norms", "delta norm and low-rank concentration per layer"),
                         ("head_spectra", "Layer-0 per-head singular value spectra"),
                         ("bias_template", "bias-only dS template (head x relative offset)")):
        uri = _file_uri(data.analysis_dir / plots[key]) if isinstance(plots.get(key), str) else None
        (figures if uri else missing).append({"caption": caption, "uri": uri, "name": key})
    return {
        "path": data.rel(data.analysis_dir / "analysis.json"),
        "base": a.get("base"), "dormant": a.get("dormant"), "seconds": fmt_num(_num(a.get("seconds")), 3),
        "focus_heads": a.get("focus_heads"), "focus_rule": l0.get("focus_rule"),
        "heads": [{"head": h.get("head"), "kv": h.get("kv_head"), "score": fmt_num(_num(h.get("score"))),
                   "q_sigma1": fmt_num(_num(h.get("q_sigma1"))), "q_top16": fmt_num(_num(h.get("q_top16_energy")), 3),
                   "k_sigma1": fmt_num(_num(h.get("k_sigma1"))), "focus": h.get("head") in focus} for h in heads[:12]],
        "n_heads": len(heads),
        "seeds": [{"id": t.get("id"), "text": t.get("text"), "score": fmt_num(_num(t.get("score"))),
                   "block": t.get("block"), "role": t.get("role")}
                  for t in _list(l0.get("seed_token_details"))[:24] if isinstance(t, dict)],
        "n_seeds": len(_list(a.get("seed_tokens"))),
        "bias_strongest": [{"head": c.get("head"), "offset": c.get("offset"), "value": fmt_num(_num(c.get("value")))}
                           for c in _list(_get(l0, "bias_template", "strongest"))[:8] if isinstance(c, dict)],
        "figures": figures, "missing_figures": [m["name"] for m in missing],
    }


def _label(fc) -> str:
    return str(fc.get("label")) if isinstance(fc, dict) else "nothing (no tensor changed)"


def _base_check(data: ReportData) -> dict | None:
    """The base check: verdict and evidence, first changed module, kind and layer tables, and the
    candidate bases in their ranked order (damaged fields show as blanks, never raise)."""
    b = data.base_check
    if b is None:
        return None
    groups = _dict(b.get("groups"))
    return {
        "path": data.rel(data.base_check_path), "base": b.get("base"), "dormant": b.get("dormant"),
        "verdict": b.get("verdict"), "evidence": [str(e) for e in _list(b.get("evidence"))],
        "first_changed": _label(b.get("first_changed")),
        "layer0_zero": b.get("layer0_scores_zero") is True and b.get("verdict") == "fine-tune",
        "seconds": fmt_num(_num(b.get("seconds")), 3),
        "groups": [{"kind": k, "identical": _dict(g).get("identical"), "changed": _dict(g).get("changed"),
                    "median": fmt_num(_num(_dict(g).get("median_rel_norm")))} for k, g in groups.items()],
        "layers": [{"label": r.get("label"), "identical": r.get("identical"), "changed": r.get("changed"),
                    "median": fmt_num(_num(r.get("median_rel_norm"))),
                    "kinds": ", ".join(str(k) for k in _list(r.get("changed_kinds")))}
                   for r in _list(b.get("layers")) if isinstance(r, dict)],
        "candidates": [{"rank": c.get("rank"), "base": c.get("base"), "verdict": c.get("verdict"),
                        "changed": f"{c.get('n_changed')} of {c.get('n_tensors')}",
                        "median": fmt_num(_num(c.get("median_rel_norm"))), "first": _label(c.get("first_changed"))}
                       for c in _list(b.get("candidates")) if isinstance(c, dict)],
    }


def _profile(data: ReportData) -> dict | None:
    p = data.profile
    if p is None:
        return None
    return {"tokens": [{"id": t.get("id"), "text": t.get("text"), "z": fmt_num(_num(t.get("z"))),
                        "mean_diff": fmt_num(_num(t.get("mean_diff")))} for t in p["tokens"][:24] if isinstance(t, dict)],
            "n_tokens": len(p["tokens"]),
            "targets": [{"text": t.get("text"), "ids": t.get("token_ids"), "score": fmt_num(_num(t.get("score")))}
                        for t in p["targets"][:12] if isinstance(t, dict)],
            "plot": _file_uri(data.profile_path.with_suffix(".png"))}


def _pool(data: ReportData) -> dict | None:
    p = data.pool
    if p is None:
        return None
    texts = p.get("texts") if isinstance(p.get("texts"), list) else []
    return {"size": len(p["token_ids"]), "tokens": list(zip(p["token_ids"][:64], texts[:64]))}


def _bench(path: Path, res: dict, png: Path | None, data: ReportData) -> dict:
    s = res.get("summary") if isinstance(res.get("summary"), dict) else {}
    m = res.get("machine") if isinstance(res.get("machine"), dict) else {}
    rows = []
    for dtype in ("float32", "bfloat16"):
        d = s.get(dtype)
        if isinstance(d, dict):
            rows.append({"label": f"native, {dtype} table", "cand_per_s": fmt_num(_num(d.get("cand_per_s")), 5),
                         "gflops": fmt_num(_num(d.get("useful_gflops")), 3),
                         "roofline": fmt_num(_num(d.get("roofline_fraction")), 2),
                         "vs_torch": fmt_num(_num(d.get("vs_torch")), 3),
                         "vs_transformers": fmt_num(_num(d.get("vs_transformers")), 3)})
    for key, label in (("torch", "torch reference"), ("transformers", "transformers Layer-0 modules")):
        if isinstance(res.get(key), dict):
            rows.append({"label": label, "cand_per_s": fmt_num(_num(res[key].get("cand_per_s")), 4), "gflops": "–",
                         "roofline": "–", "vs_torch": "–", "vs_transformers": "–"})
    load = m.get("loadavg_start"), m.get("loadavg_end")
    machine = f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores"
    if all(isinstance(x, list) and x for x in load):
        machine += f", load average {load[0][0]:.1f} -> {load[1][0]:.1f}"
    return {"path": data.rel(path), "stamp": res.get("stamp"), "command": res.get("command"), "machine": machine,
            "rows": rows, "plot": _file_uri(png), "plot_note": None if png else "no plot next to this result"}
