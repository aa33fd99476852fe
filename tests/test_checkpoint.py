"""Loading: local directories, single-file and sharded checkpoints, the offline hub cache, and
bad checkpoints that must fail with a clear error naming the file and tensor."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from l0score import CheckpointError, Scorer
from l0score.core.checkpoint import LAYER0_KEYS, load_layer0
from l0score.core.model_pair import ModelPair

Q = LAYER0_KEYS["wq"]


@pytest.fixture
def pair_copy(tiny_pair, tmp_path):
    shutil.copytree(tiny_pair, tmp_path / "pair")
    return tmp_path / "pair"


def shard_of(model_dir, key):
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    return model_dir / index["weight_map"][key]


def rewrite(model_dir, key, fn):
    path = shard_of(model_dir, key)
    tensors = load_file(path)
    fn(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_pair_metadata(tiny_pair):
    pair = ModelPair.load(tiny_pair / "base", tiny_pair / "dormant")
    assert pair.n_tokens == len(pair.tokenizer) < pair.config.vocab_rows
    assert {pair.tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")} <= pair.special_ids


def test_single_file_checkpoint_loads_the_same(tiny_pair, tmp_path):
    src = tiny_pair / "base"
    dst = tmp_path / "single"
    shutil.copytree(src, dst)
    merged = {}
    for f in sorted(dst.glob("model-*.safetensors")):
        merged.update(load_file(f))
        f.unlink()
    (dst / "model.safetensors.index.json").unlink()
    save_file(merged, dst / "model.safetensors", metadata={"format": "pt"})
    a, b = load_layer0(src), load_layer0(dst)
    assert torch.equal(a.wq, b.wq) and torch.equal(a.embed, b.embed)


def test_hub_id_from_local_cache_only(tiny_pair, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snap = cache / "models--acme--tiny-base" / "snapshots" / "0123456789abcdef"
    shutil.copytree(tiny_pair / "base", snap)
    (cache / "models--acme--tiny-base" / "refs").mkdir()
    (cache / "models--acme--tiny-base" / "refs" / "main").write_text("0123456789abcdef")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    w = load_layer0("acme/tiny-base")
    assert torch.equal(w.wq, load_layer0(tiny_pair / "base").wq)
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        load_layer0("acme/not-downloaded")


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_layer0(tmp_path / "nowhere")


def test_missing_shard(pair_copy):
    shard = shard_of(pair_copy / "dormant", Q)
    shard.unlink()
    with pytest.raises(CheckpointError, match=rf"{shard.name}: shard missing \(holds .*q_proj.weight"):
        ModelPair.load(pair_copy / "base", pair_copy / "dormant")


def test_missing_key_in_index(pair_copy):
    index_path = pair_copy / "base" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    del index["weight_map"][Q]
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"index.json: tensor {Q} is not listed"):
        load_layer0(pair_copy / "base")


def test_missing_key_in_shard(pair_copy):
    rewrite(pair_copy / "base", Q, lambda t: t.pop(Q))
    with pytest.raises(CheckpointError, match=rf"tensor {Q} not found"):
        load_layer0(pair_copy / "base")


def test_wrong_shape(pair_copy):
    rewrite(pair_copy / "base", Q, lambda t: t.__setitem__(Q, t[Q][:-1].clone()))
    with pytest.raises(CheckpointError, match=rf"{shard_of(pair_copy / 'base', Q).name}: tensor {Q} has shape"):
        load_layer0(pair_copy / "base")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights(pair_copy, bad):
    def poison(t):
        t[Q] = t[Q].clone()
        t[Q][3, 5] = bad

    rewrite(pair_copy / "dormant", Q, poison)
    with pytest.raises(CheckpointError, match=rf"tensor {Q} holds NaN or inf"):
        load_layer0(pair_copy / "dormant")


def test_corrupt_safetensors(pair_copy):
    shard = shard_of(pair_copy / "base", Q)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{shard.name}: corrupt or unreadable safetensors"):
        load_layer0(pair_copy / "base")
    shard.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        load_layer0(pair_copy / "base")


@pytest.mark.parametrize("field, value, name", [
    ("rope_theta", 12345.0, "rope_theta"),
    ("rms_norm_eps", 1e-5, "rms_norm_eps"),
    ("max_position_embeddings", 1024, "max_positions"),
])
def test_mismatched_configs(pair_copy, field, value, name):
    cfg_path = pair_copy / "dormant" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg[field] = value
    if "rope_parameters" in cfg and field == "rope_theta":
        cfg["rope_parameters"]["rope_theta"] = value
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=rf"disagree on {name}"):
        Scorer.from_pretrained(pair_copy / "base", pair_copy / "dormant", backend="torch")


def test_mismatched_shapes_between_models(pair_factory):
    a = pair_factory()
    b = pair_factory(num_attention_heads=2, num_key_value_heads=1)
    with pytest.raises(CheckpointError, match="disagree on num_heads"):
        ModelPair.load(a / "base", b / "dormant")


def test_no_config(pair_copy):
    (pair_copy / "base" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_layer0(pair_copy / "base")
