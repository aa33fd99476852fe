"""The Ray cases: run only by tests/test_cluster.py, inside a network namespace with only loopback up
(Ray binds to the machine's interface address otherwise). Not collected on its own (no test_ prefix).

First a local Ray (2 CPUs): pair scans, batches, extensions, the search drivers, the CLI and verify
through Ray equal one process exactly, the table is in the object store once and mapped read-only by
every worker, checkpoints resume across the switch. Then a two-node cluster (one CPU each): a worker
process killed mid-scan and a node removed mid-scan still end with the identical top-K.
"""
import json
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

if {line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:]} != {"lo"}:
    raise RuntimeError("tests/ray_cases.py starts Ray: run it through tests/test_cluster.py (loopback-only namespace)")

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from l0score import Scorer, verify  # noqa: E402
from l0score import cluster  # noqa: E402
from l0score.cli import main as cli_main  # noqa: E402
from l0score.search import beam, coord, mcts, pair_scan  # noqa: E402

FIELDS = ("max_abs", "head_max", "argmax", "kl", "head_kl", "band")


@pytest.fixture(scope="module")
def pair8k(tmp_path_factory):
    """A pair whose tables (0.5-1 MB each) go to the shared-memory object store (objects under 100 KB
    are copied inline), and whose (head, offset) shards take ~0.1 s: long enough to kill a worker mid-scan."""
    from l0score.synthetic import make_pair

    out = tmp_path_factory.mktemp("pair8k")
    make_pair(out, size="tiny", seed=1, vocab_size=8256, n_tokens=8192)
    return out


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    cluster.shutdown()
    ray.shutdown()


def native(pair_dir, **kw) -> Scorer:
    return Scorer.from_pretrained(pair_dir / "base", pair_dir / "dormant", backend="native", **kw)


def assert_same_scores(a, b):
    for f in FIELDS:
        assert torch.equal(getattr(a, f), getattr(b, f)), f


def test_pairs_equal_and_table_once_per_node(local_ray, pair8k, tmp_path):
    scorer = native(pair8k, template="raw", baseline="bias")
    pool = scorer.default_pool()
    want = pair_scan(scorer, pool, offsets=(0, 1, 2, 5), top=30, progress=False)
    got = pair_scan(scorer, pool, offsets=(0, 1, 2, 5), top=30, progress=False, executor=cluster.RayExecutor("auto"))
    assert got == want
    workers = cluster.scorer_pool(scorer).describe()
    assert len(workers) == 2
    assert len({tuple(w["table_ids"]) for w in workers}) == 1  # one table for the node, four objects
    assert all(len(w["table_ids"]) == 4 and w["table_writeable"] is False for w in workers)  # mapped, not copied

    # a checkpoint started without Ray finishes with it, and the other way round
    for first, second in ((None, "auto"), ("auto", None)):
        ckpt = tmp_path / f"scan-{first}.ckpt.json"
        part = pair_scan(scorer, pool, offsets=(0, 1, 2, 5), top=30, progress=False, checkpoint=ckpt,
                         seconds=1e-9, executor=cluster.make_executor(first))
        assert not part["complete"] and 1 <= len(json.loads(ckpt.read_text())["per_head"]) < 4
        done = pair_scan(scorer, pool, offsets=(0, 1, 2, 5), top=30, progress=False, checkpoint=ckpt, resume=True,
                         executor=cluster.make_executor(second))
        assert done == want and not ckpt.exists()


def test_batches_and_extensions_equal(local_ray, tiny_pair):
    scorer = native(tiny_pair, template="chat", baseline="bias", offsets=(1, 2))
    remote = cluster.distribute(scorer, "auto")
    rng = np.random.default_rng(0)
    pool = scorer.default_pool()
    cands = [pool[rng.integers(0, len(pool), int(n))].tolist() for n in rng.integers(1, 9, 500)]  # ragged
    assert_same_scores(remote.score_batch(cands), scorer.score_batch(cands))
    prefixes = [[], pool[:3].tolist(), pool[7:8].tolist()]
    assert_same_scores(remote.score_extensions(prefixes, pool), scorer.score_extensions(prefixes, pool))
    with pytest.raises(ValueError, match="candidate 1"):  # bad input: the same error as one process
        remote.score_batch([[1, 2], [1, 10**6]])


def test_search_drivers_equal(local_ray, tiny_pair, tmp_path):
    scorer = native(tiny_pair, template="chat")
    runs = {"beam": (beam, dict(width=4)), "coord": (coord, dict(restarts=2, max_sweeps=2)),
            "mcts": (mcts, dict(branch=4, batch=4, budget=6000))}
    for name, (driver, kw) in runs.items():
        common = dict(length=3, objective="kl", progress=False, seed=3, **kw)
        want = driver(scorer, out=tmp_path / f"{name}-local.jsonl", **common)
        got = driver(scorer, out=tmp_path / f"{name}-ray.jsonl", executor=cluster.RayExecutor("auto"), **common)
        assert got == want, name
        assert len(want) > 0


def test_cli_ray_switch(local_ray, tiny_pair, tmp_path):
    pair = ["--base", str(tiny_pair / "base"), "--dormant", str(tiny_pair / "dormant")]
    cands = tmp_path / "cands.txt"
    cands.write_text("\n".join(",".join(str(t) for t in row) for row in np.arange(3, 303).reshape(-1, 3).tolist()))
    outs = {}
    for flag in ([], ["--ray"]):
        key = "ray" if flag else "local"
        assert cli_main(["score", *pair, "--file", str(cands), "--out", str(tmp_path / f"{key}.json"), *flag]) == 0
        assert cli_main(["search", "pairs", *pair, "--out", str(tmp_path / f"{key}-pairs.jsonl"), "--quiet",
                         "--offsets", "1,2", *flag]) == 0
        outs[key] = [(tmp_path / f"{key}.json").read_text(), (tmp_path / f"{key}-pairs.jsonl").read_text()]
    assert outs["ray"] == outs["local"]
    assert len(json.loads(outs["ray"][0])["results"]) == 100


def test_unreachable_address_is_named(local_ray, tiny_pair, tmp_path, capsys):
    with pytest.raises(ConnectionError, match="127.0.0.1:9"):
        cluster.connect("127.0.0.1:9")
    code = cli_main(["score", "--base", str(tiny_pair / "base"), "--dormant", str(tiny_pair / "dormant"),
                     "--ids", "5,6", "--ray", "127.0.0.1:9"])
    assert code == 2 and "127.0.0.1:9" in capsys.readouterr().out


def test_verify_equal(local_ray, tiny_pair, tmp_path):
    kw = dict(probes=["Say hi.", "What is 2+2?"], max_new_tokens=4, batch_size=2, threads=1, progress=False)
    cands = [[5, 6, 7], [40, 41], [100]]
    want = verify(tiny_pair / "base", tiny_pair / "dormant", cands, out=tmp_path / "local.json", **kw)
    got = verify(tiny_pair / "base", tiny_pair / "dormant", cands, out=tmp_path / "ray.json", executor=cluster.RayExecutor("auto"), **kw)
    for key in ("results", "untriggered", "summary"):
        assert got[key] == want[key], key


def test_full_model_scorer_equal(local_ray, tiny_pair, tmp_path):
    """A FullModelScorer through distribute(): ragged batches and extensions (both sides) are cut where
    one process cuts them (equal-length groups, batch_size rows per forward), so every value is
    bit-identical; a with_options view is scored under its own options on the same workers."""
    from l0score.judge.fullmodel import FullModelOptions, FullModelScorer
    from l0score.search.exhaustive import exhaustive
    from l0score.search.gcg import gcg

    opts = FullModelOptions(probes=("What is 7 plus 5?", "Say hi."), metrics=("kl", "js", "hidden"), batch_size=8,
                            device="cpu")
    local = FullModelScorer(tiny_pair / "base", tiny_pair / "dormant", opts)
    remote = cluster.distribute(local, "auto")
    assert len(remote.pool) == 2 and remote.tokenizer is local.tokenizer
    rng = np.random.default_rng(0)
    pool = local.default_pool()
    cands = [pool[rng.integers(0, len(pool), int(n))].tolist() for n in rng.integers(1, 5, 40)]

    def same(a, b, metrics):
        assert set(a.values) == set(b.values) == set(metrics)
        for m in metrics:
            assert torch.equal(a.values[m], b.values[m]), m

    same(remote.score_batch(cands), local.score_batch(cands), ("kl", "js", "hidden"))
    for side in ("right", "left"):
        prefixes, ext = [[5, 6], [7]], pool[:37]
        same(remote.score_extensions(prefixes, ext, side=side), local.score_extensions(prefixes, ext, side=side),
             ("kl", "js", "hidden"))
    target = local.with_options(target_ids=(10, 20))
    remote_target = cluster.distribute(target, "auto")
    assert remote_target.pool is remote.pool  # the options travel with the call: the same workers
    same(remote_target.score_batch(cands[:20]), target.score_batch(cands[:20]), ("kl", "js", "hidden", "target"))
    with pytest.raises(ValueError, match="candidate 3"):  # named by its index in the call, as in one process
        remote.score_batch([[1], [2], [3], [1, 10**6]])
    # a search driver on the full-model objective (what `hunt --ray` runs)
    kw = dict(length=2, pool=pool[:8], objective="kl", progress=False, calibrate=8)
    want = exhaustive(local, out=tmp_path / "local.jsonl", **kw)
    assert exhaustive(local, out=tmp_path / "ray.jsonl", executor=cluster.RayExecutor("auto"), **kw) == want and len(want) > 0
    # gcg: gradients through the local models, its exact evaluations on the workers
    kw = dict(length=2, steps=2, topk=4, batch=8, pool=pool[:16], objective="kl", progress=False, calibrate=8)
    want = gcg(local, out=tmp_path / "gcg-local.jsonl", **kw)
    got = gcg(local, out=tmp_path / "gcg-ray.jsonl", executor=cluster.RayExecutor("auto"), **kw)
    assert got.results == want.results and got.evaluations == want.evaluations > 0


# --- a two-node cluster: faults -------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_nodes(local_ray):
    cluster.shutdown()
    ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = [c.add_node(num_cpus=1) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c, nodes
    cluster.shutdown()
    ray.shutdown()
    c.shutdown()


def _scan_with_fault(scorer, pool, ckpt, address, fault) -> tuple[dict, dict]:
    """pair_scan on Ray; `fault()` runs once the first head is checkpointed (the scan is under way)."""
    seen = {}

    def watch():
        while not ckpt.exists():
            time.sleep(0.005)
        seen["heads_done"] = len(json.loads(ckpt.read_text())["per_head"])
        fault()
        seen["at"] = time.monotonic()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    result = pair_scan(scorer, pool, offsets=range(8), top=25, progress=False, checkpoint=ckpt, executor=cluster.make_executor(address))
    seen["end"] = time.monotonic()
    t.join(5)
    return result, seen


def test_faults_rerun_elsewhere(two_nodes, pair8k, tmp_path):
    c, nodes = two_nodes
    scorer = native(pair8k, template="raw")
    pool = scorer.default_pool()
    want = pair_scan(scorer, pool, offsets=range(8), top=25, progress=False)

    sp = cluster.scorer_pool(scorer, c.address)
    workers = sp.describe()
    by_node = {w["node"]: tuple(w["table_ids"]) for w in workers}
    assert len(by_node) == 2 and len(set(by_node.values())) == 2  # a table per node, put there once
    assert all(w["table_writeable"] is False for w in workers)

    # a worker process killed mid-scan: its shard runs again, on a replacement on the same node
    pid = next(iter(sp.workers.info.values()))["pid"]
    got, seen = _scan_with_fault(scorer, pool, tmp_path / "kill.ckpt.json", c.address,
                                 lambda: os.kill(pid, signal.SIGKILL))
    assert got == want
    assert seen["heads_done"] < 4 and seen["at"] < seen["end"] and sp.workers.failures >= 1

    # a whole node lost mid-scan: the other node finishes the scan
    failures = sp.workers.failures
    got, seen = _scan_with_fault(scorer, pool, tmp_path / "node.ckpt.json", c.address,
                                 lambda: c.remove_node(nodes[1], allow_graceful=False))
    assert got == want
    assert seen["heads_done"] < 4 and sp.workers.failures > failures
