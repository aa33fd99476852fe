"""The engine's shared data types, in one place: what a backend returns (`RowStats`), what it is
given (`PackedBatch`) and what the Layer-0 scorer returns (`Scores`, with the metric names). The
interfaces that use them are in protocols.py; docs/architecture.md ("Interfaces") has the overview."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RowStats:
    """Reductions over a set of rows, per candidate and scored head (the backend contract).

    head_max [B, Hs]: max |dS - baseline| over scored cells (-inf where none)
    head_pos [B, Hs, 2]: absolute (i, j) of that max
    head_kl  [B, Hs]: sum of row KLs
    band     [B, n_offsets]: max over heads and scored cells with i - j = offset (0 where none)
    """

    head_max: torch.Tensor
    head_pos: torch.Tensor
    head_kl: torch.Tensor
    band: torch.Tensor

    @classmethod
    def cat(cls, parts: list["RowStats"]) -> "RowStats":
        """Stats of consecutive candidate chunks, joined along the batch."""
        if len(parts) == 1:
            return parts[0]
        return cls(*(torch.cat([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__))


@dataclass
class PackedBatch:
    """Candidate + suffix rows: ids [B, L] (0-padded), cand_len and dep_len [B] (int64 tensors)."""

    ids: torch.Tensor
    cand_len: torch.Tensor
    dep_len: torch.Tensor

    def __len__(self) -> int:
        return len(self.cand_len)

    def slice(self, start: int, stop: int) -> "PackedBatch":
        dep = self.dep_len[start:stop]
        width = int(dep.max()) if len(dep) else 0
        return PackedBatch(self.ids[start:stop, :width], self.cand_len[start:stop], dep)


METRICS = ("max_abs", "kl", "band", "head_max_sum")


@dataclass
class Scores:
    """All fields are tensors on the scorer's device; column n of head_max/head_kl is head heads[n].

    max_abs [B], head_max [B, Hs], argmax [B, 3] = (head, i, j) in absolute positions,
    kl [B], head_kl [B, Hs], band [B, len(offsets)].
    """

    max_abs: torch.Tensor
    head_max: torch.Tensor
    argmax: torch.Tensor
    kl: torch.Tensor
    head_kl: torch.Tensor
    band: torch.Tensor
    heads: tuple[int, ...]
    offsets: tuple[int, ...]

    @classmethod
    def from_stats(cls, stats: RowStats, heads: tuple[int, ...], offsets: tuple[int, ...]) -> "Scores":
        max_abs, best = stats.head_max.max(-1)
        rows = torch.arange(len(best), device=best.device)
        head_ids = torch.tensor(heads, device=best.device)[best]
        argmax = torch.cat((head_ids[:, None], stats.head_pos[rows, best]), -1)
        return cls(max_abs, stats.head_max, argmax, stats.head_kl.sum(-1), stats.head_kl, stats.band, heads, offsets)

    def __len__(self) -> int:
        return len(self.max_abs)

    def __getitem__(self, idx) -> "Scores":
        """The candidates selected by an index tensor, slice or list."""
        fields = {f: getattr(self, f)[idx] for f in ("max_abs", "head_max", "argmax", "kl", "head_kl", "band")}
        return Scores(**fields, heads=self.heads, offsets=self.offsets)

    def metric(self, name: str, weights: dict[str, float] | None = None) -> torch.Tensor:
        """One score per candidate: "max_abs", "kl", "band" (max over offsets), "head_max_sum" (sum over
        the scored heads of head_max: a sequence scores on every head it moves, so holding all of a
        trigger's (key, query) pairs beats holding its strongest pair twice)."""
        if name == "max_abs":
            return self.max_abs
        if name == "kl":
            return self.kl
        if name == "band":
            if not self.offsets:
                raise ValueError("metric 'band' needs band offsets (offsets=...)")
            return self.band.amax(-1)
        if name == "head_max_sum":
            return self.head_max.sum(-1)
        raise ValueError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}")

    def record(self, b: int) -> dict:
        """What a search result keeps of candidate b."""
        h, i, j = self.argmax[b].tolist()
        return {"max_abs": float(self.max_abs[b]), "kl": float(self.kl[b]), "argmax": {"head": h, "i": i, "j": j},
                "band": {str(r): v for r, v in zip(self.offsets, self.band[b].tolist())}}

    def to_records(self) -> list[dict]:
        """Plain Python rows, one per candidate (JSON-ready)."""
        cpu = {k: getattr(self, k).detach().cpu().tolist() for k in ("max_abs", "head_max", "argmax", "kl", "head_kl", "band")}
        records = []
        for b in range(len(self)):
            h, i, j = cpu["argmax"][b]
            records.append({
                "max_abs": cpu["max_abs"][b],
                "kl": cpu["kl"][b],
                "argmax": {"head": h, "i": i, "j": j},
                "head_max": dict(zip(self.heads, cpu["head_max"][b])),
                "head_kl": dict(zip(self.heads, cpu["head_kl"][b])),
                "band": dict(zip(self.offsets, cpu["band"][b])),
            })
        return records


def merge_rows(dep: RowStats, prefix: RowStats) -> RowStats:
    """Fold stats of earlier rows ([1, ...], computed once) into every candidate's stats."""
    take = prefix.head_max > dep.head_max
    return RowStats(
        head_max=torch.where(take, prefix.head_max, dep.head_max),
        head_pos=torch.where(take[..., None], prefix.head_pos, dep.head_pos),
        head_kl=dep.head_kl + prefix.head_kl,
        band=torch.maximum(dep.band, prefix.band),
    )


@dataclass
class MetricValues:
    """Per-candidate values of named metrics (CPU float tensors [B]): what the full-model and the
    first-module scorers return; subclasses name whose values they are."""

    values: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.values.values())))

    def __getitem__(self, idx):
        return type(self)({k: v[idx] for k, v in self.values.items()})

    def metric(self, name: str) -> torch.Tensor:
        if name not in self.values:
            raise ValueError(f"metric {name!r} was not computed; available: {', '.join(self.values)}")
        return self.values[name]

    def record(self, b: int) -> dict:
        return {k: float(v[b]) for k, v in self.values.items()}

    @classmethod
    def cat(cls, parts: list):
        return cls({k: torch.cat([p.values[k] for p in parts]) for k in parts[0].values})
