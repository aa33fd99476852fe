"""What each hunt stage hands on to the next: one dataclass per stage result.

`hunt.py` keeps them in `Hunt.stages` (stage name -> result) and saves them in ``hunt.json`` under
``"stages"`` through `to_json()`; a resumed hunt reads them back with `stage_from_json`. The JSON is
the record format hunt.json has always had (same keys, and keys a stage leaves out stay out), so a
hunt.json from an earlier l0score resumes and tools that read the file (bench/hunt_pairs.py) keep
working. A key this l0score does not know is kept in `extra` and written back as it was read.

    base_check  BaseCheckStage   verdict, first changed module, the route and why
    analyze     AnalyzeStage     focus heads, seed tokens by source (skipped off the Layer-0 route)
    profile     ProfileStage     the top target strings (ProfileTarget)
    layer0      PoolStage        the ranked token pool, whichever route proposed it, and its best sequences
    search      SearchStage      one DriverRun per search run; Fired when the target route stopped early
    minimize    MinimizeStage    the shortened best candidates (Shortened)
    verify      VerifyStage      the funnel fields only (verify writes verify/report.json)
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar


def _split(cls, record: dict, renamed: dict | None = None) -> tuple[dict, dict]:
    """(constructor arguments, unknown keys) of a JSON record for dataclass `cls`; `renamed` maps
    JSON keys to field names (``from`` is a keyword)."""
    if not isinstance(record, dict):
        raise ValueError(f"a {cls.__name__} record must be a JSON object, got {type(record).__name__}")
    renamed = renamed or {}
    names = {f.name for f in fields(cls)} - {"extra"}
    known, extra = {}, {}
    for key, value in record.items():
        name = renamed.get(key, key)
        if name in names:
            known[name] = value
        else:
            extra[key] = value
    return known, extra


def _build(cls, known: dict, extra: dict):
    try:
        return cls(**known, extra=extra)
    except TypeError as exc:  # a required key is missing
        raise ValueError(f"hunt.json: a {cls.__name__} record lacks a key ({exc})") from None


def _some(**items) -> dict:
    """The items whose value is not None (a key the stage leaves out stays out of the JSON)."""
    return {k: v for k, v in items.items() if v is not None}


@dataclass(kw_only=True)
class StageResult:
    """What every stage records, shown in the report's funnel: `candidates` it scored or looked at,
    a one-line `note`, and the `seconds` it took (set by the hunt when the stage completes)."""

    candidates: int | None = None
    note: str = ""
    seconds: float | None = None
    extra: dict = field(default_factory=dict)  # keys this l0score does not know, written back as read
    _note_first: ClassVar[bool] = False  # where the note sits in the record (the order hunt.json has had)

    def _fields(self) -> dict:
        """The stage's own keys, in the record's order."""
        return {}

    def to_json(self) -> dict:
        own, note = self._fields(), {"note": self.note}
        middle = {**note, **own} if self._note_first else {**own, **note}
        return {"candidates": self.candidates, **middle, **_some(seconds=self.seconds), **self.extra}

    @classmethod
    def from_json(cls, record: dict):
        known, extra = _split(cls, record)
        return _build(cls, known, extra)


@dataclass(kw_only=True)
class BaseCheckStage(StageResult):
    """The base check's verdict, the first changed module (FirstChanged as a dict: layer, module,
    label, tensors; None when nothing changed), the route it chose (hunt.ROUTES) with the reason, and
    the layers whose attention changed."""

    verdict: str
    first_changed: dict | None
    route: str = "layer0"  # a record without a route: the only route there was
    route_reason: str = ""
    attention_layers: list[int] | None = None  # decoder layers whose attention changed (older records: None)

    def _fields(self) -> dict:
        return {"verdict": self.verdict, "first_changed": self.first_changed, "route": self.route,
                "route_reason": self.route_reason, **_some(attention_layers=self.attention_layers)}


@dataclass(kw_only=True)
class AnalyzeStage(StageResult):
    """Layer-0 focus heads and seed tokens from the weight difference; `seed_sources` ranks the seeds
    by where they came from ("alignment", "changed_query_keys"). Skipped (all empty) off the Layer-0 route."""

    focus_heads: list[int]
    seed_tokens: list[int]
    seed_sources: dict[str, list[int]]
    skipped: bool = False
    _note_first: ClassVar[bool] = True

    def _fields(self) -> dict:
        return {**({"skipped": True} if self.skipped else {}), "focus_heads": self.focus_heads,
                "seed_tokens": self.seed_tokens, "seed_sources": self.seed_sources}


@dataclass(kw_only=True)
class ProfileTarget:
    """A string the dormant says more than the base: its text, its token ids and the profile's score."""

    text: str
    token_ids: list[int]
    score: float
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"text": self.text, "token_ids": self.token_ids, "score": self.score, **self.extra}

    @classmethod
    def from_json(cls, record: dict) -> "ProfileTarget":
        return _build(cls, *_split(cls, record))


@dataclass(kw_only=True)
class ProfileStage(StageResult):
    """The profile's top targets, strongest first (the target-inversion route searches toward them)."""

    targets: list[ProfileTarget] = field(default_factory=list)

    def _fields(self) -> dict:
        return {"targets": [t.to_json() for t in self.targets]}

    @classmethod
    def from_json(cls, record: dict) -> "ProfileStage":
        known, extra = _split(cls, record)
        known["targets"] = [ProfileTarget.from_json(t) for t in known.get("targets") or []]
        return _build(cls, known, extra)


@dataclass(kw_only=True)
class PoolStage(StageResult):
    """The "layer0" stage, whichever route proposed it: the ranked token `pool` the full-model search
    and verify's null samples draw from, and the proposer's best `sequences`. `route` is recorded
    only when a route other than Layer 0 proposed the pool."""

    pool: list[int]
    sequences: list[list[int]] = field(default_factory=list)
    route: str | None = None

    def _fields(self) -> dict:
        return {"pool": self.pool, "sequences": self.sequences, **_some(route=self.route)}


@dataclass(kw_only=True)
class DriverRun:
    """One search run of the search stage: its `length`, candidates scored, seconds and results file
    (relative to the hunt's directory). A target-inversion run also has `route`, `driver` and the
    `target` text; an exhaustive run `covered` (every candidate of the top `covered` pool tokens was
    scored) and `exhaustive` (the whole pool was); a screened one `screened`, the candidates one
    context's screen rated (`candidates` are those the full models then judged)."""

    length: int
    candidates: int
    seconds: float | None = None
    file: str | None = None
    route: str | None = None
    driver: str | None = None
    target: str | None = None
    covered: int | None = None
    exhaustive: bool | None = None
    screened: int | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {**_some(route=self.route, driver=self.driver), "length": self.length,
                **_some(target=self.target), "candidates": self.candidates,
                **_some(screened=self.screened, covered=self.covered, exhaustive=self.exhaustive,
                        seconds=self.seconds, file=self.file),
                **self.extra}

    @classmethod
    def from_json(cls, record: dict) -> "DriverRun":
        return _build(cls, *_split(cls, record))


@dataclass(kw_only=True)
class Fired:
    """The candidate that ended the search early: the target route's, which flipped and made the dormant
    say the profiled target, or the exhaustive search's that stood out and flipped (extra by=standout)."""

    token_ids: list[int]
    text: str
    amplification: float
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"token_ids": self.token_ids, "text": self.text, "amplification": self.amplification, **self.extra}

    @classmethod
    def from_json(cls, record: dict) -> "Fired":
        return _build(cls, *_split(cls, record))


@dataclass(kw_only=True)
class SearchStage(StageResult):
    """The full-model search's runs in the order they ran; `fired` when the target route stopped the
    search early (no exhaustive runs then) or a candidate of the exhaustive search stood out and flipped
    (the lengths after its own not run)."""

    runs: list[DriverRun] = field(default_factory=list)
    fired: Fired | None = None

    def _fields(self) -> dict:
        return {"runs": [r.to_json() for r in self.runs],
                **({"fired": self.fired.to_json()} if self.fired is not None else {})}

    @classmethod
    def from_json(cls, record: dict) -> "SearchStage":
        known, extra = _split(cls, record)
        known["runs"] = [DriverRun.from_json(r) for r in known.get("runs") or []]
        if known.get("fired") is not None:
            known["fired"] = Fired.from_json(known["fired"])
        return _build(cls, known, extra)


@dataclass(kw_only=True)
class Shortened:
    """A best candidate with tokens dropped while its score held: the shorter `token_ids`, their
    `score` and the candidate it came `from_ids` (JSON key ``from``)."""

    token_ids: list[int]
    score: float
    from_ids: list[int]
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"token_ids": self.token_ids, "score": self.score, "from": self.from_ids, **self.extra}

    @classmethod
    def from_json(cls, record: dict) -> "Shortened":
        return _build(cls, *_split(cls, record, renamed={"from": "from_ids"}))


@dataclass(kw_only=True)
class MinimizeStage(StageResult):
    """The best candidates that minimisation shortened (the others held no spare token)."""

    shortened: list[Shortened] = field(default_factory=list)

    def _fields(self) -> dict:
        return {"shortened": [s.to_json() for s in self.shortened]}

    @classmethod
    def from_json(cls, record: dict) -> "MinimizeStage":
        known, extra = _split(cls, record)
        known["shortened"] = [Shortened.from_json(s) for s in known.get("shortened") or []]
        return _build(cls, known, extra)


@dataclass(kw_only=True)
class VerifyStage(StageResult):
    """Verify's funnel fields; its measures are in verify/report.json, which the report reads."""


STAGE_TYPES: dict[str, type[StageResult]] = {
    "base_check": BaseCheckStage, "analyze": AnalyzeStage, "profile": ProfileStage, "layer0": PoolStage,
    "search": SearchStage, "minimize": MinimizeStage, "verify": VerifyStage,
}


def stage_from_json(name: str, record: dict) -> StageResult:
    """The typed result of stage `name` from its hunt.json record (a stage name this l0score does not
    know reads as a plain StageResult, its keys kept in `extra`)."""
    return STAGE_TYPES.get(name, StageResult).from_json(record)


def stages_from_json(records: dict) -> dict[str, StageResult]:
    if not isinstance(records, dict):
        raise ValueError(f"hunt.json: 'stages' must be a JSON object, got {type(records).__name__}")
    return {name: stage_from_json(name, rec) for name, rec in records.items()}


def stages_to_json(stages: dict[str, StageResult]) -> dict[str, dict]:
    return {name: result.to_json() for name, result in stages.items()}
