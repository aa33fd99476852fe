"""The base check: what did the fine-tune change, and is this base the right one at all?

Every search in l0score compares a dormant model with its base, so a wrong base (another version
of the family) turns every score into the difference between two pretrained models. This module
compares the dormant with one or more candidate bases, tensor by tensor, before anything else runs:

* per tensor: bit-identical or not, relative norm ‖Δ‖/‖W_base‖, max |Δ|;
* grouped by kind (embed, lm_head, norm, attn_q/k/v/o, mlp_gate/up/down) and by layer;
* the first changed module in forward order (everything before it is bit-identical, so both models
  share its input exactly — the fact the Layer-0 and first-changed-module engines rest on);
* a verdict with its evidence: `identical`, `fine-tune` or `different model`;
* with several bases, every one checked and ranked; the most plausible becomes the report's base.

Streaming: tensors are read in row chunks through safetensors memory maps that are closed after
each chunk, so resident memory stays at two chunks (one of each model) plus their float64 copies,
whatever the checkpoint's size. Bits are compared as integers; norms are summed in float64.
"""
from __future__ import annotations

import json
import math
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open

from ..core.checkpoint import CheckpointError, TensorEntry, list_tensors, resolve_model_dir

FORMAT = "l0score-base-check"
VERDICTS = ("fine-tune", "identical", "different model")  # also the ranking order of candidates
MODULES = ("embed", "attn", "mlp", "norm", "lm_head")
KINDS = ("embed", "norm", "attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down", "lm_head")
_INT_VIEW = {"BF16": torch.int16, "F16": torch.int16, "F32": torch.int32, "F64": torch.int64}
_KIND_OF = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_o",
            "gate_proj": "mlp_gate", "up_proj": "mlp_up", "down_proj": "mlp_down"}
_EMBED, _LM_HEAD = "model.embed_tokens.weight", "lm_head.weight"


class Unpairable(CheckpointError):
    """The two checkpoints cannot be compared tensor by tensor (names, shapes, vocabulary, dtype)."""


@dataclass
class BaseCheckOptions:
    """different_rel: a changed tensor whose ‖Δ‖/‖W_base‖ reaches this was re-drawn, not fine-tuned
    (fine-tunes of pretrained models move weights by about 1e-4..1e-1 of their norm, a hard full
    fine-tune of a tiny model up to about 0.4 in median; two pretrained models by about 1).
    different_share: the share of all tensors that must be changed that much for `different model`.
    chunk_elements: elements per row chunk read from each model (bounds resident memory).
    progress: called as progress(base_index, n_bases, tensor_index, n_tensors, name)."""

    different_rel: float = 0.7
    different_share: float = 0.5
    chunk_elements: int = 1 << 22
    progress: Callable[[int, int, int, int, str], None] | None = None

    def check(self) -> None:
        if not 0 < self.different_rel:
            raise ValueError(f"different_rel must be positive, got {self.different_rel}")
        if not 0 < self.different_share <= 1:
            raise ValueError(f"different_share must be in (0, 1], got {self.different_share}")
        if self.chunk_elements < 1:
            raise ValueError(f"chunk_elements must be positive, got {self.chunk_elements}")


@dataclass
class TensorCheck:
    name: str
    kind: str  # one of KINDS, or "other"
    layer: int | None  # decoder layer; None for embed, final norm and lm_head
    module: str  # one of MODULES, or "other"
    shape: list[int]
    dtype: str
    identical: bool
    rel_norm: float  # ‖Δ‖ / ‖W_base‖ (0 when identical; inf when the base tensor is all zeros)
    max_abs: float
    base_norm: float
    delta_norm: float


@dataclass
class FirstChanged:
    """The first module in forward order holding a changed tensor; every tensor before it is
    bit-identical, so both models feed it the same input."""

    layer: int | None
    module: str  # one of MODULES
    label: str  # e.g. "layer 0 MLP", "layer 3 attention q/k", "embeddings"
    tensors: list[str]


@dataclass
class CandidateCheck:
    """One candidate base against the dormant."""

    base: str
    verdict: str  # one of VERDICTS
    evidence: list[str]
    first_changed: FirstChanged | None
    n_tensors: int
    n_changed: int
    n_near_one: int  # changed tensors with rel_norm >= different_rel
    median_rel_norm: float | None  # over changed tensors
    groups: dict[str, dict]
    layers: list[dict]
    tensors: list[TensorCheck]
    tied_lm_head: bool  # lm_head stored in neither checkpoint (tied to the embeddings)
    seconds: float
    rank: int = 0

    @property
    def layer0_attention_identical(self) -> bool:
        """Every Layer-0 attention tensor (and what feeds it: embeddings, input norm) bit-identical:
        Layer-0 scores are then exactly zero."""
        return bool(self.tensors) and all(t.identical for t in self.tensors
                   if t.kind == "embed" or (t.layer == 0 and t.module == "attn")
                   or t.name == "model.layers.0.input_layernorm.weight")

    @property
    def layer0_attention_changed(self) -> bool:
        """Some Layer-0 q/k/v/o tensor changed."""
        return any(not t.identical for t in self.tensors if t.layer == 0 and t.module == "attn")

    @property
    def layer0_scores_zero(self) -> bool:
        """What Layer-0 attention logits are made of (embeddings, Layer-0 input norm, q/k weights and
        biases) is bit-identical: every Layer-0 score is exactly zero, whatever else changed."""
        return bool(self.tensors) and all(t.identical for t in self.tensors if t.kind == "embed"
                   or (t.layer == 0 and t.kind in ("attn_q", "attn_k"))
                   or t.name == "model.layers.0.input_layernorm.weight")


@dataclass
class BaseCheckResult:
    dormant: str
    candidates: list[CandidateCheck]  # ranked, most plausible first
    seconds: float
    options: dict = field(default_factory=dict)

    @property
    def chosen(self) -> CandidateCheck:
        return self.candidates[0]

    @property
    def base(self) -> str:
        return self.chosen.base

    @property
    def verdict(self) -> str:
        return self.chosen.verdict

    @property
    def first_changed(self) -> FirstChanged | None:
        return self.chosen.first_changed

    def to_json(self) -> dict:
        """The content of base-check.json."""
        c = self.chosen
        return {
            "format": FORMAT, "version": 1, "dormant": self.dormant, "base": c.base, "verdict": c.verdict,
            "evidence": c.evidence, "first_changed": _fc_json(c.first_changed),
            "layer0_attention_identical": c.layer0_attention_identical, "layer0_scores_zero": c.layer0_scores_zero,
            "groups": c.groups, "layers": c.layers, "tensors": [asdict(t) for t in c.tensors],
            "candidates": [_candidate_json(x) for x in self.candidates],
            "options": self.options, "seconds": self.seconds,
        }


# --------------------------------------------------------------------------------------------
# Entry point


def base_check(dormant, bases, options: BaseCheckOptions | None = None) -> BaseCheckResult:
    """Compare `dormant` with every candidate in `bases` (paths or cached hub ids; one or more).

    Raises ValueError (CheckpointError) naming the tensor and file for mismatched tensor names or
    shapes, different vocabularies, dtype mixtures, missing shards and unreadable files.
    """
    options = options or BaseCheckOptions()
    options.check()
    if isinstance(bases, (str, Path)):
        bases = [bases]
    if not bases:
        raise ValueError("base_check needs at least one base")
    start = time.perf_counter()
    dormant_dir = resolve_model_dir(dormant)
    entries_d = list_tensors(dormant_dir)
    checks, errors = [], []
    for i, base in enumerate(bases):
        base_dir = resolve_model_dir(base)
        try:
            checks.append(check_one(base_dir, dormant_dir, entries_d, options, i, len(bases)))
        except Unpairable as exc:  # among several bases, one that cannot be paired is simply not it
            errors.append(exc)
            checks.append(_unpairable(base_dir, exc))
    if len(errors) == len(bases):
        raise errors[0]
    ranked = sorted(checks, key=_plausibility)
    for rank, c in enumerate(ranked, 1):
        c.rank = rank
    opts = {k: v for k, v in asdict(options).items() if k != "progress"}
    return BaseCheckResult(str(dormant_dir), ranked, time.perf_counter() - start, opts)


def check_one(base_dir: Path, dormant_dir: Path, entries_d: dict[str, TensorEntry] | None = None,
              options: BaseCheckOptions | None = None, index: int = 0, n_bases: int = 1) -> CandidateCheck:
    """One base against the dormant: every tensor, then groups, layers, first change and verdict."""
    options = options or BaseCheckOptions()
    t0 = time.perf_counter()
    entries_b = list_tensors(base_dir)
    entries_d = entries_d if entries_d is not None else list_tensors(dormant_dir)
    pairs, tied = pair_tensors(entries_b, entries_d, base_dir, dormant_dir)
    tensors = []
    for j, (name, eb, ed) in enumerate(pairs):
        if options.progress:
            options.progress(index, n_bases, j, len(pairs), name)
        tensors.append(compare_tensor(name, eb, ed, options.chunk_elements))
    changed = [t for t in tensors if not t.identical]
    rels = [t.rel_norm for t in changed]
    verdict, evidence = _verdict(tensors, options)
    return CandidateCheck(
        base=str(base_dir), verdict=verdict, evidence=evidence, first_changed=first_changed(tensors),
        n_tensors=len(tensors), n_changed=len(changed),
        n_near_one=sum(r >= options.different_rel for r in rels),
        median_rel_norm=statistics.median(rels) if rels else None,
        groups=group_table(tensors), layers=layer_table(tensors), tensors=tensors, tied_lm_head=tied,
        seconds=time.perf_counter() - t0)


def _plausibility(c: CandidateCheck):
    """Ranking key: verdict (a fine-tune first, a different model last; one that cannot even be
    paired after that), then fewer changed tensors, then smaller changes."""
    mean_rel = sum(min(t.rel_norm, 10.0) for t in c.tensors) / max(1, len(c.tensors))
    return (VERDICTS.index(c.verdict), not c.tensors, c.n_changed, mean_rel)


def _unpairable(base_dir: Path, exc: Exception) -> CandidateCheck:
    return CandidateCheck(
        base=str(base_dir), verdict="different model",
        evidence=[f"cannot be compared with the dormant tensor by tensor: {exc}",
                  "this is not the dormant's base; check the base's family and version"],
        first_changed=None, n_tensors=0, n_changed=0, n_near_one=0, median_rel_norm=None, groups={}, layers=[],
        tensors=[], tied_lm_head=False, seconds=0.0)


# --------------------------------------------------------------------------------------------
# Names: kind, layer, module, forward order


def describe(name: str) -> tuple[str, int | None, str]:
    """(kind, layer, module) of a Qwen2 tensor name."""
    m = re.search(r"layers\.(\d+)\.(.+)$", name)
    if m:
        layer, rest = int(m.group(1)), m.group(2)
        if "layernorm" in rest or rest.startswith("norm"):
            return "norm", layer, "norm"
        proj = rest.split(".")[-2] if "." in rest else rest
        kind = _KIND_OF.get(proj, "other")
        return kind, layer, kind.split("_")[0] if kind != "other" else "other"
    if "embed_tokens" in name:
        return "embed", None, "embed"
    if name.startswith("lm_head"):
        return "lm_head", None, "lm_head"
    if re.search(r"(^|\.)norm\.", name):
        return "norm", None, "norm"
    return "other", None, "other"


def _step(name: str) -> tuple:
    """Forward-order key: embeddings, then per layer input norm, attention q/k/v, o, post-attention
    norm, MLP gate/up, down; then the final norm and lm_head."""
    kind, layer, _ = describe(name)
    if kind == "embed":
        return (0, 0, 0, name)
    if layer is None:
        return (2, 0, 1 if kind == "lm_head" else 0, name)
    within = {"attn_q": 1, "attn_k": 1, "attn_v": 1, "attn_o": 2, "mlp_gate": 4, "mlp_up": 4, "mlp_down": 5}
    pos = within.get(kind, 6)
    if kind == "norm":
        pos = 3 if "post_attention" in name else 0
    return (1, layer, pos, name)


# --------------------------------------------------------------------------------------------
# Pairing and reading


def pair_tensors(entries_b: dict[str, TensorEntry], entries_d: dict[str, TensorEntry], base_dir: Path,
                 dormant_dir: Path) -> tuple[list[tuple[str, tuple, tuple]], bool]:
    """Matching (name, (base entry, stored key), (dormant entry, stored key)) in forward order, after
    checking names, shapes, vocabularies and dtypes. A missing lm_head on one side means tied embeddings: that side's
    embedding stands in for it. Returns (pairs, lm_head absent from both)."""
    entries_b, entries_d = dict(entries_b), dict(entries_d)
    tied = _LM_HEAD not in entries_b and _LM_HEAD not in entries_d
    keys_b, keys_d = {n: n for n in entries_b}, {n: n for n in entries_d}
    for entries, keys, other in ((entries_b, keys_b, entries_d), (entries_d, keys_d, entries_b)):
        if _LM_HEAD in other and _LM_HEAD not in entries and _EMBED in entries:
            entries[_LM_HEAD], keys[_LM_HEAD] = entries[_EMBED], _EMBED  # tied: the embedding is the head
    _check_names(entries_b, entries_d, base_dir, dormant_dir)
    eb, ed = entries_b.get(_EMBED), entries_d.get(_EMBED)
    if eb and ed and eb.shape[:1] != ed.shape[:1]:
        raise Unpairable(
            f"different vocabularies: {_EMBED} has {eb.shape[0]} rows in {eb.file} but {ed.shape[0]} in {ed.file}; "
            "a fine-tune keeps its base's vocabulary, so this base is not the dormant's")
    pairs = []
    for name in sorted(entries_b, key=_step):
        b, d = entries_b[name], entries_d[name]
        if b.shape != d.shape:
            raise Unpairable(f"mismatched shapes: tensor {name} is {list(b.shape)} in {b.file} "
                             f"but {list(d.shape)} in {d.file}")
        for e in (b, d):
            if e.dtype not in _INT_VIEW:
                raise CheckpointError(f"{e.file}: tensor {name} has unsupported dtype {e.dtype} "
                                      f"(expected one of {', '.join(sorted(_INT_VIEW))})")
        if b.dtype != d.dtype:
            raise Unpairable(f"dtype mixture: tensor {name} is {b.dtype} in {b.file} but {d.dtype} in "
                             f"{d.file}; bit-identity needs one dtype (convert one checkpoint first)")
        pairs.append((name, (b, keys_b[name]), (d, keys_d[name])))
    return pairs, tied


def _check_names(entries_b: dict, entries_d: dict, base_dir: Path, dormant_dir: Path) -> None:
    only_b, only_d = sorted(set(entries_b) - set(entries_d)), sorted(set(entries_d) - set(entries_b))
    if not (only_b or only_d):
        return
    parts = []
    for label, names, where in (("base", only_b, dormant_dir), ("dormant", only_d, base_dir)):
        if names:
            more = f" and {len(names) - 5} more" if len(names) > 5 else ""
            parts.append(f"{len(names)} tensor(s) of the {label} are not in {where}: {', '.join(names[:5])}{more}")
    raise Unpairable("mismatched tensor names: " + "; ".join(parts))


def _read_rows(entry: TensorEntry, key: str, start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) of the tensor stored as `key`, flattened. The file is opened per call so its
    memory map is released at once: resident memory stays at the chunk, not at every page touched."""
    try:
        with safe_open(entry.file, framework="pt") as f:
            if len(entry.shape) == 0:
                return f.get_tensor(key).reshape(1)
            return f.get_slice(key)[start:stop].reshape(-1)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{entry.file}: tensor {key} unreadable ({exc})") from exc


def compare_tensor(name: str, src_b: tuple, src_d: tuple, chunk_elements: int = 1 << 22) -> TensorCheck:
    """Bit identity, ‖Δ‖, ‖W_base‖ and max |Δ| of one tensor pair ((entry, stored key) each), in row
    chunks."""
    (eb, key_b), (ed, key_d) = src_b, src_d
    shape = eb.shape
    rows = shape[0] if shape else 1
    row_len = math.prod(shape[1:]) if len(shape) >= 2 else 1
    step = max(1, chunk_elements // row_len) if len(shape) >= 2 else rows
    ints = _INT_VIEW[eb.dtype]
    identical, sq_b, sq_d, max_abs = True, 0.0, 0.0, 0.0
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        cb, cd = _read_rows(eb, key_b, start, stop), _read_rows(ed, key_d, start, stop)
        b64 = cb.to(torch.float64)
        sq_b += float(b64.square().sum())
        if not torch.equal(cb.view(ints), cd.view(ints)):
            identical = False
            delta = cd.to(torch.float64).sub_(b64)
            sq_d += float(delta.square().sum())
            max_abs = max(max_abs, float(delta.abs().max()))
            del delta
        del cb, cd, b64
    for value, entry in ((sq_b, eb), (sq_d, ed)):
        if not math.isfinite(value):
            raise CheckpointError(f"{entry.file}: tensor {name} holds NaN or inf values")
    kind, layer, module = describe(name)
    base_norm, delta_norm = math.sqrt(sq_b), math.sqrt(sq_d)
    rel = 0.0 if identical else (delta_norm / base_norm if base_norm > 0 else math.inf)
    return TensorCheck(name, kind, layer, module, list(shape), eb.dtype, identical, rel, max_abs, base_norm,
                       delta_norm)


# --------------------------------------------------------------------------------------------
# Summaries


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def group_table(tensors: list[TensorCheck]) -> dict[str, dict]:
    """kind -> identical count, changed count, median relative norm of the changed tensors."""
    out = {}
    for kind in KINDS + ("other",):
        ts = [t for t in tensors if t.kind == kind]
        if ts:
            rels = [t.rel_norm for t in ts if not t.identical]
            out[kind] = {"identical": len(ts) - len(rels), "changed": len(rels), "median_rel_norm": _median(rels),
                         "max_rel_norm": max(rels) if rels else None}
    return out


def _layer_label(layer: int | None, kinds: set[str]) -> str:
    if layer is not None:
        return f"layer {layer}"
    return "final norm / lm_head" if kinds - {"embed"} else "embeddings"


def layer_table(tensors: list[TensorCheck]) -> list[dict]:
    """Per layer in forward order: identical/changed counts, median relative norm of the changed
    tensors, and which kinds changed. The embeddings and the final norm + lm_head are rows too."""
    rows: dict[tuple, list[TensorCheck]] = {}
    for t in tensors:
        key = (0, 0) if t.kind == "embed" else (2, 0) if t.layer is None else (1, t.layer)
        rows.setdefault(key, []).append(t)
    out = []
    for key in sorted(rows):
        ts = rows[key]
        rels = [t.rel_norm for t in ts if not t.identical]
        out.append({"layer": ts[0].layer, "label": _layer_label(ts[0].layer, {t.kind for t in ts}),
                    "identical": len(ts) - len(rels), "changed": len(rels), "median_rel_norm": _median(rels),
                    "changed_kinds": sorted({t.kind for t in ts if not t.identical}, key=_kind_order)})
    return out


def _kind_order(kind: str) -> int:
    return KINDS.index(kind) if kind in KINDS else len(KINDS)


def first_changed(tensors: list[TensorCheck]) -> FirstChanged | None:
    """The first changed module in forward order (tensors must be in forward order)."""
    first = next((t for t in tensors if not t.identical), None)
    if first is None:
        return None
    same = [t for t in tensors if t.layer == first.layer and t.module == first.module and not t.identical]
    if first.module == "norm":  # a norm is its own step: only the tensors of that one norm
        same = [first]
    return FirstChanged(first.layer, first.module, _module_label(first, same), [t.name for t in same])


def _module_label(first: TensorCheck, changed: list[TensorCheck]) -> str:
    where = f"layer {first.layer} " if first.layer is not None else ""
    if first.module == "attn":
        parts = [k.split("_")[1] for k in KINDS if k.startswith("attn") and any(t.kind == k for t in changed)]
        return f"{where}attention {'/'.join(parts)}"
    if first.module == "mlp":
        return f"{where}MLP"
    if first.module == "norm":
        if first.layer is None:
            return "final norm"
        return where + ("post-attention norm" if "post_attention" in first.name else "input norm")
    return {"embed": "embeddings", "lm_head": "lm_head"}.get(first.module, where + first.name)


def _verdict(tensors: list[TensorCheck], options: BaseCheckOptions) -> tuple[str, list[str]]:
    n = len(tensors)
    changed = [t for t in tensors if not t.identical]
    if not changed:
        return "identical", [f"all {n} tensors are bit-identical: the dormant is this base, nothing was fine-tuned"]
    rels = sorted(t.rel_norm for t in changed)
    near_one = [t for t in changed if t.rel_norm >= options.different_rel]
    med = statistics.median(rels)
    evidence = [f"{len(changed)} of {n} tensors changed, {n - len(changed)} bit-identical",
                f"relative norm ‖Δ‖/‖W_base‖ of the changed tensors: median {med:.3g}, max {rels[-1]:.3g}"]
    if len(near_one) >= options.different_share * n:
        evidence.append(
            f"{len(near_one)} of {n} tensors changed by at least {options.different_rel:g} of their own norm: "
            "this is almost certainly the wrong base (a different pretrained model, not its fine-tune). "
            "Check the base's family and version (e.g. Qwen2 vs Qwen2.5, base vs Instruct) before any search")
        return "different model", evidence
    evidence.append(f"{len(near_one)} changed tensor(s) reach relative norm {options.different_rel:g}; "
                    "the deltas are small against the weights, as a fine-tune's are")
    if med >= 0.1:
        evidence.append(f"a median change of {med:.2g} of the weights' norm is large for a fine-tune: if the "
                        "search finds nothing, make sure this is the dormant's exact base")
    return "fine-tune", evidence


# --------------------------------------------------------------------------------------------
# Files


def _fc_json(fc: FirstChanged | None) -> dict | None:
    return asdict(fc) if fc else None


def _candidate_json(c: CandidateCheck) -> dict:
    return {"rank": c.rank, "base": c.base, "verdict": c.verdict, "evidence": c.evidence,
            "first_changed": _fc_json(c.first_changed), "n_tensors": c.n_tensors, "n_changed": c.n_changed,
            "n_identical": c.n_tensors - c.n_changed, "n_near_one": c.n_near_one,
            "median_rel_norm": c.median_rel_norm, "layer0_attention_identical": c.layer0_attention_identical,
            "layer0_scores_zero": c.layer0_scores_zero,
            "tied_lm_head": c.tied_lm_head, "groups": c.groups, "layers": c.layers, "seconds": c.seconds}


def write_base_check(result: BaseCheckResult, out_dir) -> dict[str, Path]:
    """Write DIR/base-check.json and DIR/base-check.md; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = result.to_json()
    paths = {"json": out / "base-check.json", "md": out / "base-check.md"}
    # strict JSON: a relative norm against an all-zero base tensor (a zero bias trained) is inf in memory
    # and null in the file
    paths["json"].write_text(json.dumps(_finite(data), indent=1, allow_nan=False, default=_json_float),
                             encoding="utf-8")
    paths["md"].write_text(summary_md(data), encoding="utf-8")
    return paths


def _finite(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def _json_float(v):
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def read_base_check(path) -> dict:
    """base-check.json (or the directory holding one), checked to be one."""
    p = Path(path)
    if p.is_dir():
        p = p / "base-check.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file (expected the base-check.json written by `l0score base-check`)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{p}: not a base-check.json (format is not {FORMAT!r})")
    return data


def _f(v) -> str:
    return "–" if v is None else f"{v:.3g}"


def summary_md(data: dict) -> str:
    """The Markdown summary of a base-check.json's content."""
    fc = data["first_changed"]
    lines = ["# Base check", "", f"**Dormant:** `{data['dormant']}`  ", f"**Base:** `{data['base']}`  ",
             f"**Verdict:** {data['verdict']}  ", f"**First changed:** {fc['label'] if fc else 'nothing'}  ",
             f"**Layer-0 attention bit-identical:** {'yes' if data['layer0_attention_identical'] else 'no'}", "",
             *[f"- {e}" for e in data["evidence"]], ""]
    if data["layer0_scores_zero"] and data["verdict"] == "fine-tune":
        lines += [LAYER0_ZERO_NOTE, ""]
    lines += ["## By kind", "", "| kind | identical | changed | median ‖Δ‖/‖W‖ (changed) |", "|---|---|---|---|"]
    lines += [f"| {k} | {g['identical']} | {g['changed']} | {_f(g['median_rel_norm'])} |"
              for k, g in data["groups"].items()]
    lines += ["", "## By layer", "", "| layer | identical | changed | median ‖Δ‖/‖W‖ | changed kinds |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['label']} | {r['identical']} | {r['changed']} | {_f(r['median_rel_norm'])} | "
              f"{', '.join(r['changed_kinds'])} |" for r in data["layers"]]
    if len(data["candidates"]) > 1:
        lines += ["", "## Candidate bases", "", "| rank | base | verdict | changed | median ‖Δ‖/‖W‖ | first changed |",
                  "|---|---|---|---|---|---|"]
        for c in data["candidates"]:
            fcc = c["first_changed"]
            lines.append(f"| {c['rank']} | `{c['base']}` | {c['verdict']} | {c['n_changed']} of {c['n_tensors']} | "
                         f"{_f(c['median_rel_norm'])} | {fcc['label'] if fcc else '–'} |")
    return "\n".join(lines) + "\n"


def layer0_zero_reason(pair) -> str | None:
    """LAYER0_ZERO_NOTE when a loaded ModelPair's Layer-0 inputs to the attention logits (embeddings,
    input norm, q/k weights and biases) are bit-identical, so every Layer-0 score is exactly zero;
    None otherwise. Compares the tensors the pair already holds, as integers."""
    ints = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
    for field_name in ("embed", "norm", "wq", "bq", "wk", "bk"):
        a, b = getattr(pair.base, field_name), getattr(pair.dormant, field_name)
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a.view(ints[a.dtype]), b.view(ints[b.dtype])):
            return None
    return LAYER0_ZERO_NOTE


LAYER0_ZERO_NOTE = (
    "The embeddings, Layer 0's input norm and Layer 0's q/k projections are bit-identical between the two models, "
    "so every Layer-0 score (dS, attention KL) is exactly zero by construction: a Layer-0 search or a focus-head "
    "ranking would only rank noise. Look where the change lives (the first changed module) instead.")
