"""Has a candidate reached a profiled target? The judge behind the hunt's early stop.

A candidate reaches the target when the dormant's reply, with the candidate in the prompt, starts like
one of the targets (their first 8 characters, `heads`) on at least half of the prompts, and then flips
in verify against its null of random candidates of the same length. The first test generates for the
given candidates only; the null (minutes with two real models) is generated only for the first
candidate that passes it, and only if it fits in `seconds` at the rate of the first test's
generations (on the real attn seed-2 control a drift target's null took 450 s of a 20-minute hunt's
search, which then ended 95 s over).
"""
from __future__ import annotations

from pathlib import Path

from .verify import verify


def reached_target(base, dormant, candidates: list[list[int]], probes, heads: list[str], out: str | Path,
                   null_samples: int, null_pool, seconds: float | None = None, **verify_options) -> dict | None:
    """verify's result row of the first candidate that reaches the target (None when none does, or when
    its null would not fit in `seconds`); writes out/target-says.json and, for a candidate that says the
    target and whose null fits, out/target-check.json."""
    out = Path(out)
    say = verify(base, dormant, candidates, probes, out=out / "target-says.json", null_samples=0, **verify_options)
    reached = [r["token_ids"] for r in say["results"] if not r["template_injection"]
               and sum(any(d["generation_dormant"].strip().startswith(h) for h in heads) for d in r["probes"])
               >= len(r["probes"]) / 2]
    if not reached:
        return None
    per_candidate = say["config"]["seconds"] / len(candidates)  # the untriggered prompts counted in: an upper bound
    if seconds is not None and null_samples * per_candidate > seconds:
        return None
    rep = verify(base, dormant, reached[:1], probes, out=out / "target-check.json", null_samples=null_samples,
                 null_pool=null_pool, **verify_options)
    r = rep["results"][0]
    return r if r["flip"] else None
