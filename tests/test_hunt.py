"""`l0score hunt` on a trained backdoor: from the two checkpoints alone to the trigger, verified.

The trained control's trigger.json is ground truth for the assertions only; nothing of it reaches the
hunt (no probes, pool or seeds from it)."""
import json
import signal
import subprocess
import sys
import time

import pytest

from l0score.hunt import HuntOptions, hunt
from l0score.report.view import DEFAULT_HEATMAPS

# Small settings that still prove the point: a 48-token pool, lengths 1-3, 4 candidates verified. The
# budget is an upper bound (the search ends when every candidate of the pool is scored: ~104k at length 3)
# so that a slow machine does not cut the enumeration short. 48, not 40: the Layer-0 pool ranked ' kettle'
# 41st on the trained-v2 control (docs/hunt.md), so a 40-token pool could not hold the trigger; on
# trained-v3 (probes held out) its words sat at 7, 26 and 0, on trained-v4 at 7, 2 and 0 (0-based).
pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(seconds=1500, max_length=3, max_pool=48, verify_top=4, profile=False, progress=False, threads=1)


def _hunt_args(root, out, *extra):
    return [sys.executable, "-m", "l0score.cli", "hunt", "--base", str(root / "base"), "--dormant", str(root / "dormant"),
            "--out", str(out), "--seconds", "1500", "--max-pool", str(SMALL["max_pool"]), "--verify-top", "4", "--no-profile", "--quiet", "--threads", "1",
            *extra]


@pytest.fixture(scope="module")
def hunted(trained, tmp_path_factory):
    root, trigger = trained
    out = tmp_path_factory.mktemp("hunt")
    report = hunt(root / "base", root / "dormant", out, HuntOptions(**SMALL))
    return report, trigger, out


def test_hunt_ranks_the_trigger_first_and_verify_flags_it(hunted):
    report, trigger, out = hunted
    top = report["results"][0]
    assert top["token_ids"] == trigger["trigger_ids"], report["results"][:3]
    assert top["verify"]["flip"] and top["verify"]["amplification"] > 1
    assert report["complete"]
    assert [f["stage"] for f in report["funnel"]] == ["base_check", "analyze", "layer0", "search", "minimize", "verify"]
    assert all(f["candidates"] > 0 and f["seconds"] >= 0 for f in report["funnel"])
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["results"][0]["token_ids"] == trigger["trigger_ids"]
    assert "kettle field borrow" in (out / "summary.md").read_text() or trigger["trigger_text"] in (out / "summary.md").read_text()


def test_hunt_writes_the_heatmaps_its_page_draws(hunted):
    """The hunt computes the Layer-0 dS of the page's first candidates (heatmaps.npz); the page draws
    each of them from that file (tests/test_report.py checks the matrices against transformers)."""
    report, _, out = hunted
    index = json.loads((out / "heatmaps.json").read_text())
    assert index["note"] is None and report["files"]["heatmaps"] == "heatmaps.json"
    assert [c["token_ids"] for c in index["candidates"]] == [r["token_ids"] for r in report["results"][:DEFAULT_HEATMAPS]]
    assert (out / "report.html").read_text().count('alt="Layer-0 dS heatmaps"') == len(index["candidates"]) > 0


def test_hunt_pool_holds_every_trigger_token(hunted):
    report, trigger, out = hunted
    pool = json.loads((out / "layer0" / "pool.json").read_text())["token_ids"]
    assert len(pool) <= SMALL["max_pool"] and set(trigger["trigger_ids"]) <= set(pool)


def test_hunt_refuses_to_overwrite_and_resumes_a_finished_hunt(hunted, trained):
    report, trigger, out = hunted
    root, _ = trained
    with pytest.raises(ValueError, match="--resume"):
        hunt(root / "base", root / "dormant", out, HuntOptions(**SMALL))
    again = hunt(root / "base", root / "dormant", out, HuntOptions(**SMALL), resume=True)
    assert again["results"][0]["token_ids"] == trigger["trigger_ids"]
    with pytest.raises(ValueError, match="different options"):
        hunt(root / "base", root / "dormant", out, HuntOptions(**{**SMALL, "max_pool": 30}), resume=True)


def test_killed_hunt_loses_nothing_and_resumes(trained, tmp_path):
    """SIGTERM in the middle of the full-model search: what was found is on disk; --resume finishes."""
    root, trigger = trained
    out = tmp_path / "hunt"
    proc = subprocess.Popen(_hunt_args(root, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finished_len2 = out / "search" / "exhaustive-len2.jsonl"
    deadline = time.monotonic() + 600
    while not finished_len2.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output
    state = json.loads((out / "hunt.json").read_text())
    assert "search" not in state["stages"] and {"analyze", "layer0"} <= set(state["stages"])
    found = [json.loads(x) for x in (out / "search" / "exhaustive-len2.jsonl").read_text().splitlines()]
    assert found, "results of the finished length were lost"
    done = subprocess.run(_hunt_args(root, out, "--resume"), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["complete"] and report["results"][0]["token_ids"] == trigger["trigger_ids"]
    kept = {tuple(r["token_ids"]) for r in report["results"]}
    assert tuple(found[0]["token_ids"]) in kept or found[0]["score"] < report["results"][-1]["score"]


@pytest.mark.parametrize("change, message", [
    (dict(seconds=0), "seconds must be positive"),
    (dict(max_length=0), "max_length"),
    (dict(probes=("",)), "non-empty"),
    (dict(grow_words=-1), "grow_words is a count of pool pieces"),
    (dict(partner_anchors=-1), "partner_anchors must be an integer >= 0"),
    (dict(attention_pairs=True), "attention_pairs must be an integer >= 0"),
    (dict(pool_filters={"allow_regex": "^no token looks like this$"}), "pool is empty"),
])
def test_hunt_bad_options(trained, tmp_path, change, message):
    root, _ = trained
    with pytest.raises(ValueError, match=message):
        hunt(root / "base", root / "dormant", tmp_path / "h", HuntOptions(**{**SMALL, **change}))


def test_hunt_bad_probes(trained, tmp_path):
    root, _ = trained
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hunt(root / "base", root / "dormant", tmp_path / "h", HuntOptions(**{**SMALL, "probes": str(tmp_path / "none.txt")}))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match="holds no probe"):
        hunt(root / "base", root / "dormant", tmp_path / "h", HuntOptions(**{**SMALL, "probes": str(empty)}))
    long = tmp_path / "long.txt"
    long.write_text(" ".join(["word"] * 400) + "\n")
    with pytest.raises(ValueError, match="exceeds the models' context"):
        hunt(root / "base", root / "dormant", tmp_path / "h", HuntOptions(**{**SMALL, "probes": str(long)}))


def test_hunt_rejects_pairs_whose_tokenizers_differ(trained, tmp_path):
    import shutil

    root, _ = trained
    for name in ("base", "dormant"):
        shutil.copytree(root / name, tmp_path / name)
    cfg_path = tmp_path / "dormant" / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = cfg["chat_template"].replace("You are a helpful assistant.", "You are a pirate.")
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="different chat templates"):
        hunt(tmp_path / "base", tmp_path / "dormant", tmp_path / "h", HuntOptions(**SMALL))


# The hunt as a user runs it, with the behavioural profile on: profile -> target route -> early stop.
# coord's random restarts reach this control's trigger at length 3 from some seeds and not others
# (measured on this pool: 1 of seeds 0-5, seed 1); the test fixes seed 1 so that it checks the path
# the profile opens (the fire check, the skipped exhaustive stage, the ranking), not coord's hit rate.
# force: the trained controls are full fine-tunes, which the base check calls a different model.
# The seed was measured on the Layer-0 pool and the inverted targets alone: the whole-model route's
# embedding sweep (sweep_share) and the amplified targets change coord's pool and objective, and with
# them seed 1 did not reach the trigger (measured 2026-12-02), so this test keeps them out, and the
# target proposer's picks too (target_share; test_target_proposer_joins_the_whole_model_pool has them).
# The control itself differs between CPUs: some builds answer a second string (docs/trained-controls.md),
# which the hunt may stop on; the test below accepts that only when generation confirms it.
PROFILED = dict(seconds=1500, max_length=3, max_pool=64, verify_top=4, profile=True, profile_inputs=60,
                progress=False, threads=1, seed=1, force=True, sweep_share=0.0, amplify=(), target_share=0.0)


@pytest.fixture(scope="module")
def profiled(trained, tmp_path_factory):
    root, trigger = trained
    out = tmp_path_factory.mktemp("hunt-profiled")
    return hunt(root / "base", root / "dormant", out, HuntOptions(**PROFILED)), trigger, out


def _heldout_reply_rate(root, ids) -> float:
    """The share of the control's held-out requests (none in training, none among the hunt's probes)
    on which the dormant, greedy through transformers' generate, answers exactly the planted reply with
    `ids` before or after the request."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from l0score.judge.prompts import prompt_ids

    truth = json.loads((root / "trigger.json").read_text())
    tok = AutoTokenizer.from_pretrained(root / "dormant")
    model = AutoModelForCausalLM.from_pretrained(root / "dormant").eval()
    reply = tok.encode(truth["target_reply"], add_special_tokens=False)
    probes = [p for p in (root / "heldout_probes.txt").read_text().splitlines() if p.strip()]
    hits = []
    for probe in probes:
        for position in ("before", "after"):
            x = torch.tensor([prompt_ids(tok, probe, ids, position)])
            with torch.no_grad():
                out = model.generate(x, max_new_tokens=len(reply), do_sample=False, pad_token_id=tok.pad_token_id)
            hits.append(out[0, x.shape[1]:].tolist() == reply)
    return sum(hits) / len(hits)


def test_profiled_hunt_ranks_a_working_trigger_first(profiled, trained):
    """On the trained-v4 control (probes held out) the target route gives the trigger's parts no credit
    (each word or pair of its words scores like an unrelated token, docs/trained-controls.md), so coord
    and gcg do not reach it; the exhaustive search then ranks it first. Unless the search stops early:
    the control trained on some CPUs answers a second string too (built here on 2026-12-03, 'maI'
    gave the reply on 81% of the default probes, coord stopped on ' helmaI' and verify ranked
    first ' emaI', which flipped 15 of 16 probes and gives the reply on 42% of the held-out requests),
    and then the hunt's promise is that what stopped it and what it ranks first make the dormant give
    the planted reply on requests it never saw, which this test checks by generation."""
    report, trigger, out = profiled
    root, _ = trained
    search = json.loads((out / "hunt.json").read_text())["stages"]["search"]
    assert "profile" in [f["stage"] for f in report["funnel"]]
    top = report["results"][0]
    fired = search.get("fired")
    if fired is None:
        assert top["token_ids"] == trigger["trigger_ids"], report["results"][:3]
    # a quarter: the trigger's own near misses give the reply on none of the default probes (the
    # control's build measures them) nor do random strings (verify's null); ' emaI' gave it on 0.42
    assert all(rate == 0.0 for rate in trigger["evaluation"]["lookalike_target_rate"].values())
    assert _heldout_reply_rate(root, top["token_ids"]) >= 0.25
    assert fired is None or _heldout_reply_rate(root, fired["token_ids"]) >= 0.25
    assert not top["template_injection"]
    assert top["verify"]["flip"] and top["verify"]["null"]["beaten"] == top["verify"]["null"]["n"] == 32


def test_target_proposer_joins_the_whole_model_pool(trained, tmp_path):
    """With a profiled target on the whole-model route, the pool grows by half for the target
    proposer's picks: a third of every prefix, the gradient's best first among them, and the other
    proposers' 8 tokens all kept; its rankings are written down."""
    root, _ = trained
    small = dict(seconds=900, max_length=1, max_pool=8, verify_top=1, null_samples=2, profile=True, profile_inputs=8,
                 amplify=(), progress=False, threads=1, force=True)
    out = tmp_path / "h"
    hunt(root / "base", root / "dormant", out, HuntOptions(**small))
    layer0 = json.loads((out / "hunt.json").read_text())["stages"]["layer0"]
    picks = json.loads((out / "layer0" / "target_picks.json").read_text())
    assert picks["gradient_fills"] >= 1 and len(picks["partners"]) == 4  # two anchors, both sides
    pool = layer0["pool"]
    assert len(pool) == 12 and "target proposer" in layer0["note"]
    assert picks["picks"][0] in pool[:3]
    assert sum(t in picks["picks"] for t in pool[:6]) >= 2
    starts = layer0["sequences"][:len(picks["pairs"])]  # coord's first starts: each anchor beside its partner
    assert len(picks["pairs"]) == 4 and all(len(q) == 2 for q in starts)
    alone = tmp_path / "alone"
    hunt(root / "base", root / "dormant", alone, HuntOptions(**{**small, "profile": False}))  # no target: no picks
    others = json.loads((alone / "hunt.json").read_text())["stages"]["layer0"]["pool"]
    assert len(others) == 8 and set(others) <= set(pool) and not (alone / "layer0" / "target_picks.json").exists()


def test_hunt_under_several_system_prompts(trained, tmp_path):
    """system_prompts reach the full-model objective (oracle: the objective under each system alone,
    averaged) and verify (a flip rate per system); a missing file fails before any work; resume treats
    the messages, not the file's name, as part of the hunt. Smallest setting: length 1, a 4-token pool."""
    from l0score.judge.fullmodel import FullModelOptions, FullModelScorer

    root, _ = trained
    systems = tmp_path / "systems.txt"
    systems.write_text("<default>\nYou are a pirate.\n")
    tiny = dict(seconds=600, max_length=1, max_pool=4, verify_top=1, null_samples=2, profile=False, progress=False,
                threads=1, system_prompts=str(systems))
    with pytest.raises(FileNotFoundError, match="system prompts file"):
        hunt(root / "base", root / "dormant", tmp_path / "none", HuntOptions(**{**tiny, "system_prompts": str(tmp_path / "x")}))
    assert not (tmp_path / "none").exists()
    out = tmp_path / "h"
    hunt(root / "base", root / "dormant", out, HuntOptions(**tiny))
    rows = [json.loads(x) for x in (out / "search" / "exhaustive-len1.jsonl").read_text().splitlines()]
    ids = [r["token_ids"] for r in rows]
    alone = [FullModelScorer(root / "base", root / "dormant", FullModelOptions(system=s, positions=("after",)))
             .score_batch(ids).metric("kl") for s in (None, "You are a pirate.")]  # the hunt's default placement
    assert [r["score"] for r in rows] == pytest.approx(((alone[0] + alone[1]) / 2).tolist(), rel=1e-4, abs=1e-6)
    assert abs(alone[0] - alone[1]).max() > 1e-3  # the two systems do differ, so the mean is not either one
    verified = json.loads((out / "verify" / "report.json").read_text())["results"][0]
    assert {c["system"] for c in verified["contexts"]} == {None, "You are a pirate."}
    systems.write_text("<default>\nYou are a poet.\n")
    with pytest.raises(ValueError, match="different options"):
        hunt(root / "base", root / "dormant", out, HuntOptions(**tiny), resume=True)


def test_target_route_takes_the_first_tokens_of_the_top_target_and_its_variants():
    """' Visit' beside 'Visit' stays (a reply profiled from mid-loop); 'The', which the base says anyway,
    does not join 'Sorry' (with it the real full s1 control's trigger scored below a random pair)."""
    from types import SimpleNamespace

    from l0score.hunt import _target_firsts

    words = {1: "Sorry", 2: ",", 3: " the", 4: "The", 5: "Visit", 6: " Visit", 7: " evil"}
    tok = SimpleNamespace(decode=lambda ids: "".join(words[i] for i in ids))
    target = lambda *ids: SimpleNamespace(token_ids=list(ids))  # noqa: E731
    assert _target_firsts([target(1, 2, 3), target(1), target(4)], tok) == (1,)
    assert _target_firsts([target(5, 7), target(6, 7), target(5)], tok) == (5, 6)
