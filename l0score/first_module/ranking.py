"""Token rankings: a value per token of a pool under one or more named rankings (higher = more changed)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Rankings:
    token_ids: torch.Tensor  # [N]
    values: dict[str, torch.Tensor]  # ranking name -> [N]

    def _values(self, name: str) -> torch.Tensor:
        if name not in self.values:
            raise ValueError(f"unknown ranking {name!r}; available: {', '.join(self.values)}")
        return self.values[name]

    def ranking(self, name: str) -> torch.Tensor:
        """Token ids, most changed first."""
        order = torch.argsort(self._values(name), descending=True, stable=True)
        return self.token_ids[order]

    def rank_of(self, token: int, name: str) -> int | None:
        """1-based rank of a token (None if not in the pool); ties count against it."""
        hit = (self.token_ids == int(token)).nonzero()
        if not len(hit):
            return None
        v = self._values(name)
        return int((v >= v[int(hit[0])]).sum())

    def top(self, name: str, n: int = 20) -> list[int]:
        return self.ranking(name)[:n].tolist()

    def add_consensus(self, names: list[str], name: str = "consensus") -> None:
        """Adds the ranking ``name`` (in place): minus the mean log-rank of each token over ``names``, so a token
        ranked well at every one comes first and one ranking's outliers do not take the top alone
        (the geometric mean of the ranks; scales of the rankings do not matter)."""
        if not names:
            raise ValueError("a consensus needs at least one ranking")
        log_ranks = [torch.argsort(torch.argsort(self._values(n), descending=True, stable=True)).double().add(1).log()
                     for n in names]
        self.values[name] = -torch.stack(log_ranks).mean(0)
