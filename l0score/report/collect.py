"""Find and read what a directory holds (hunt, analyze, search, verify, bench outputs) into one model.

Files are recognised by their content, not by where they sit, so a hunt's output directory, a
folder holding a few separate runs, or a single command's output all work:

* ``report.json`` with ``"format": "l0score-hunt"``: the hunt's summary (ranked results, funnel);
  read only at `HUNT_VERSION` (another version is reported as a problem, the rest still renders);
* ``analysis.json`` (`l0score analyze`): has ``layer0`` and ``focus_heads``;
* ``base-check.json`` (`l0score base-check`): ``"format": "l0score-base-check"``;
* a verify report (`l0score verify`): JSON with ``results`` and ``untriggered``;
* search results: ``*.jsonl`` whose lines carry ``token_ids`` (and ``OUT.ckpt.json`` next to them for
  the budget used, the seconds and the template); a file is Layer-0 or full-model by its rows'
  ``objective`` ("layer0" / "full"), or, in rows without one, Layer-0 when it sits in a folder
  named ``layer0`` or its rows carry Layer-0 fields (``max_abs`` and ``argmax``);
* ``profile.json`` (``tokens`` and ``targets``), ``pool.json`` (``token_ids`` and ``texts``);
* bench results (`l0score bench`): JSON with ``stamp``, ``machine`` and ``summary``, plus the PNG of
  the same stem.

Nothing here raises on a damaged file: truncated JSONL lines, unreadable JSON and unknown versions
become `ReportData.problems`, shown on the page. Only a directory that holds nothing recognisable
is an error (`ValueError`), and a missing one (`FileNotFoundError`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

HUNT_FORMAT = "l0score-hunt"
BASE_CHECK_FORMAT = "l0score-base-check"
HUNT_VERSION = 1
MAX_DEPTH = 4  # folder levels below DIR that are searched
MAX_FILE_BYTES = 512 << 20  # larger JSON files are skipped (a report never needs one)
LAYER0_FIELDS = ("max_abs", "argmax")


@dataclass
class SearchFile:
    """One search output: its ranked records and, from its checkpoint, what the run spent."""

    path: Path
    stage: str  # "layer0" or "full"
    records: list[dict]
    options: dict = field(default_factory=dict)
    used: int | None = None
    seconds: float | None = None


@dataclass
class VerifyReport:
    path: Path
    data: dict

    @property
    def untriggered(self) -> dict[str, dict]:
        rows = self.data.get("untriggered")
        return {u["probe"]: u for u in rows if isinstance(u, dict) and isinstance(u.get("probe"), str)} \
            if isinstance(rows, list) else {}


@dataclass
class Candidate:
    """Everything known about one token sequence, merged across the outputs by its ids."""

    token_ids: list[int]
    text: str | None
    route: str | None = None  # hunt: how it was found (e.g. "layer0", "full")
    hunt: dict | None = None  # the hunt's result row
    layer0: dict | None = None  # best Layer-0 search record
    full: dict | None = None  # best full-model search record
    verify: dict | None = None  # the verify result (per-probe details, generations)
    verify_report: VerifyReport | None = None
    found_in: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[int, ...]:
        return tuple(self.token_ids)


@dataclass
class ReportData:
    root: Path
    hunt: dict | None = None
    hunt_path: Path | None = None
    analysis: dict | None = None
    analysis_dir: Path | None = None
    base_check: dict | None = None
    base_check_path: Path | None = None
    profile: dict | None = None
    profile_path: Path | None = None
    pool: dict | None = None
    searches: list[SearchFile] = field(default_factory=list)
    verifies: list[VerifyReport] = field(default_factory=list)
    benches: list[tuple[Path, dict, Path | None]] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    files: list[tuple[str, Path, str]] = field(default_factory=list)  # (kind, path, modified)

    def rel(self, path: Path) -> str:
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(path)

    def missing(self) -> list[str]:
        """What the page cannot show, in the words of the section that would show it."""
        out = []
        if self.hunt is None:
            out.append("hunt summary (report.json with format l0score-hunt): no funnel or hunt ranking")
        if self.analysis is None:
            out.append("weight-diff analysis (analysis.json from `l0score analyze`)")
        if not self.searches:
            out.append("search results (JSONL from `l0score search`)")
        if not self.verifies:
            out.append("full-model verification (report.json from `l0score verify`): no generations, KL or flips")
        return out


# ------------------------------------------------------------------------------------------------


def collect(directory) -> ReportData:
    """Read every recognisable output under `directory` (see the module docstring)."""
    root = Path(directory)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such directory")
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory (give the folder holding the hunt, analyze, search or "
                         "verify output)")
    data = ReportData(root=root.resolve())
    checkpoints: dict[Path, dict] = {}
    jsonl: list[Path] = []
    for path in _walk(data.root):
        if path.name.endswith(".ckpt.json"):
            ckpt = _read_json(path, data.problems)
            if isinstance(ckpt, dict):
                checkpoints[path.with_name(path.name[: -len(".ckpt.json")])] = ckpt
        elif path.suffix == ".jsonl":
            jsonl.append(path)
        elif path.suffix == ".json":
            _classify_json(path, data)
    for path in jsonl:
        _read_search(path, checkpoints.get(path), data)
    if not (data.hunt or data.analysis or data.base_check or data.searches or data.verifies or data.benches or data.profile):
        found = "; ".join(data.problems) if data.problems else "no JSON or JSONL file of l0score's"
        raise ValueError(f"{root}: no l0score output found to report on (looked for a hunt report.json, "
                         f"base-check.json, analysis.json, search JSONL, a verify report and bench results): {found}")
    data.candidates = _merge_candidates(data)
    return data


def _walk(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and depth < MAX_DEPTH)
        for name in sorted(filenames):
            if name.endswith((".json", ".jsonl")) and not name.startswith("."):
                yield Path(dirpath) / name


def _read_json(path: Path, problems: list[str]):
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            problems.append(f"{path.name}: larger than {MAX_FILE_BYTES >> 20} MB, skipped")
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        problems.append(f"{path}: unreadable JSON ({_short(exc)}), skipped")
        return None


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__


def _modified(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M")


def _classify_json(path: Path, data: ReportData) -> None:
    obj = _read_json(path, data.problems)
    if not isinstance(obj, dict):
        return
    if obj.get("format") == HUNT_FORMAT or (path.name == "report.json" and "funnel" in obj):
        _read_hunt(path, obj, data)
    elif obj.get("format") == BASE_CHECK_FORMAT:
        if data.base_check is None:
            data.base_check, data.base_check_path = obj, path
            data.files.append(("base check", path, _modified(path)))
        else:
            data.problems.append(f"{data.rel(path)}: a second base-check.json, not shown "
                                 f"(showing {data.rel(data.base_check_path)})")
    elif "layer0" in obj and "focus_heads" in obj:
        if data.analysis is None:
            data.analysis, data.analysis_dir = obj, path.parent
            data.files.append(("analysis", path, _modified(path)))
        else:
            data.problems.append(f"{data.rel(path)}: a second analysis.json, not shown "
                                 f"(showing {data.rel(data.analysis_dir / 'analysis.json')})")
    elif isinstance(obj.get("results"), list) and "untriggered" in obj:
        data.verifies.append(VerifyReport(path, obj))
        data.files.append(("verify", path, _modified(path)))
    elif {"stamp", "machine", "summary"} <= obj.keys():
        if all(b[1].get("stamp") != obj.get("stamp") for b in data.benches):  # latest.json repeats a stamp
            png = next((p for p in (path.with_suffix(".png"), path.parent / f"bench-{obj.get('stamp')}.png")
                        if p.is_file()), None)
            data.benches.append((path, obj, png))
            data.files.append(("bench", path, _modified(path)))
    elif isinstance(obj.get("tokens"), list) and isinstance(obj.get("targets"), list):
        data.profile, data.profile_path = obj, path
        data.files.append(("profile", path, _modified(path)))
    elif isinstance(obj.get("token_ids"), list) and "texts" in obj:
        data.pool = obj
        data.files.append(("pool", path, _modified(path)))


def _read_hunt(path: Path, obj: dict, data: ReportData) -> None:
    version = obj.get("version")
    if obj.get("format") != HUNT_FORMAT or version != HUNT_VERSION:
        what = f"format {obj.get('format')!r} version {version!r}"
        newer = isinstance(version, int) and version > HUNT_VERSION
        data.problems.append(f"{data.rel(path)}: a hunt summary of {what}; this l0score reads {HUNT_FORMAT!r} "
                             f"version {HUNT_VERSION}{' (it was written by a newer l0score: upgrade)' if newer else ''}. "
                             "Its ranking and funnel are not shown; the stage outputs next to it are.")
        return
    if not isinstance(obj.get("results", []), list) or not isinstance(obj.get("funnel", []), list):
        data.problems.append(f"{data.rel(path)}: hunt summary whose results or funnel is not a list, not shown")
        return
    data.hunt, data.hunt_path = obj, path
    data.files.append(("hunt", path, _modified(path)))


def _read_search(path: Path, ckpt: dict | None, data: ReportData) -> None:
    records, bad = [], []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        data.problems.append(f"{data.rel(path)}: unreadable ({_short(exc)})")
        return
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad.append(n)
            continue
        ids = rec.get("token_ids") if isinstance(rec, dict) else None
        if not isinstance(ids, list) or not ids or not all(isinstance(t, int) for t in ids):
            bad.append(n)
            continue
        records.append(rec)
    if bad:
        data.problems.append(f"{data.rel(path)}: {len(bad)} truncated or invalid line(s) skipped "
                             f"(line {', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''})")
    if not records:
        if not bad:
            data.problems.append(f"{data.rel(path)}: no search records (lines with token_ids), skipped")
        return
    objective = records[0].get("objective")
    if objective in ("layer0", "full"):  # search JSONL rows name their objective
        layer0 = objective == "layer0"
    else:  # older rows: by folder (a hunt's layer0/) or by the Layer-0 scorer's fields
        layer0 = "layer0" in path.relative_to(data.root).parts[:-1] or all(k in records[0] for k in LAYER0_FIELDS)
    sf = SearchFile(path, "layer0" if layer0 else "full", records)
    if ckpt is not None:
        sf.options = ckpt.get("options") if isinstance(ckpt.get("options"), dict) else {}
        sf.used = ckpt.get("used") if isinstance(ckpt.get("used"), int) else None
        sf.seconds = ckpt.get("elapsed") if isinstance(ckpt.get("elapsed"), (int, float)) else None
    data.searches.append(sf)
    data.files.append(("search", path, _modified(path)))


# ------------------------------------------------------------------------------------------------


def _merge_candidates(data: ReportData) -> list[Candidate]:
    """One row per token sequence: the hunt's order first, then verify's, then search scores."""
    cands: dict[tuple[int, ...], Candidate] = {}

    def get(ids, text) -> Candidate | None:
        if not isinstance(ids, list) or not ids or not all(isinstance(t, int) for t in ids):
            return None
        key = tuple(ids)
        if key not in cands:
            cands[key] = Candidate(list(ids), text if isinstance(text, str) else None)
        elif cands[key].text is None and isinstance(text, str):
            cands[key].text = text
        return cands[key]

    if data.hunt is not None:
        rows = [r for r in data.hunt.get("results", []) if isinstance(r, dict)]
        for r in sorted(rows, key=lambda r: r["rank"] if isinstance(r.get("rank"), int) else 1 << 30):
            c = get(r.get("token_ids"), r.get("text"))
            if c is not None and c.hunt is None:
                c.hunt, c.route = r, r.get("route")
                c.found_in.append("hunt")
    for vr in data.verifies:
        for r in vr.data.get("results", []):
            c = get(r.get("token_ids"), r.get("text")) if isinstance(r, dict) else None
            if c is not None and c.verify is None:
                c.verify, c.verify_report = r, vr
                c.found_in.append(f"verify ({data.rel(vr.path)})")
    searches = sorted(data.searches, key=lambda s: s.stage != "full")
    for sf in searches:
        for rec in sorted(sf.records, key=lambda r: -_num(r.get("score"))):
            c = get(rec["token_ids"], rec.get("text"))
            slot = "layer0" if sf.stage == "layer0" else "full"
            if getattr(c, slot) is None:
                setattr(c, slot, {**rec, "file": data.rel(sf.path)})
                c.found_in.append(f"{sf.stage} search ({data.rel(sf.path)})")
    return list(cands.values())


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("-inf")
