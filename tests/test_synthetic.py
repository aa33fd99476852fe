"""Tests of l0score.synthetic: synthetic pairs load in transformers and their trigger stands out.

The oracle is transformers' own Qwen2 Layer-0 modules (embed_tokens, input_layernorm, q/k_proj,
rotary_emb, apply_rotary_pos_emb, repeat_kv) run in float32, not this package's reference code.
"""

import json
import math
import os
import time

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb, repeat_kv

from l0score.synthetic import SIZES, PairSpec, make_pair
from l0score.synthetic.tokenizer import build_tokenizer

SENTINEL = "<<CANDIDATE>>"


def load_model(directory):
    model, info = AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    assert not any(info.values()), info
    return model.eval()


@torch.no_grad()
def layer0_logits(model, ids):
    """Pre-softmax Layer-0 logits S[b, h, i, j] = q_i . k_j / sqrt(D), computed by transformers' modules."""
    cfg = model.config
    H, KV, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    B, T = ids.shape
    x = model.model.embed_tokens(ids)
    normed = model.model.layers[0].input_layernorm(x)
    attn = model.model.layers[0].self_attn
    q = attn.q_proj(normed).view(B, T, H, D).transpose(1, 2)
    k = attn.k_proj(normed).view(B, T, KV, D).transpose(1, 2)
    cos, sin = model.model.rotary_emb(x, torch.arange(T).expand(B, T))
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    return q @ repeat_kv(k, H // KV).transpose(-1, -2) / math.sqrt(D)


def score(base, dormant, candidates, prefix=(), suffix=()):
    """(max |dS| over candidate cells, summed KL over rows from the candidate start) per candidate."""
    cands = torch.tensor(candidates)
    B, n = cands.shape
    ids = torch.cat([torch.tensor(prefix, dtype=torch.long).expand(B, -1), cands,
                     torch.tensor(suffix, dtype=torch.long).expand(B, -1)], dim=1)
    T, start = ids.shape[1], len(prefix)
    s_base, s_dormant = layer0_logits(base, ids), layer0_logits(dormant, ids)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    in_cand = torch.zeros(T, dtype=torch.bool)
    in_cand[start:start + n] = True
    cells = causal & (in_cand[:, None] | in_cand[None, :])
    max_abs = (s_dormant - s_base).abs().masked_fill(~cells, 0).amax(dim=(1, 2, 3))
    mask = torch.zeros(T, T).masked_fill(~causal, float("-inf"))
    log_d = torch.log_softmax(s_dormant + mask, -1)
    log_b = torch.log_softmax(s_base + mask, -1)
    kl = (log_d.exp() * (log_d - log_b)).masked_fill(~causal, 0).sum(-1)
    return max_abs, kl[:, :, start:].sum(dim=(1, 2))


def chat_context(tokenizer):
    """Template ids before and after the user content (default system prompt, generation prompt)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": SENTINEL}], add_generation_prompt=True,
                                         tokenize=False)
    before, after = text.split(SENTINEL)
    return tokenizer.encode(before), tokenizer.encode(after)


def random_candidates(trigger, n_tokens, count=1000, seed=123):
    """Uniform random regular-token candidates of the trigger's length.

    Candidates holding a planted pair (t_k somewhere before t_{k+1}) are dropped: they contain part
    of the trigger and rightly score like it.
    """
    gen = torch.Generator().manual_seed(seed)
    cands = torch.randint(0, n_tokens - 3, (count, len(trigger)), generator=gen).tolist()

    def holds_pair(c):
        return any(a in c and b in c[c.index(a) + 1:] for a, b in zip(trigger, trigger[1:]))

    return [c for c in cands if not holds_pair(c)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_pair(str(tmp_path_factory.mktemp("tiny")), size="tiny", seed=0)


def test_sizes_have_the_required_shapes():
    big = SIZES["qwen2-7b-l0"]
    assert (big.hidden_size, big.num_attention_heads, big.num_key_value_heads, big.head_dim) == (3584, 28, 4, 128)
    assert (big.intermediate_size, big.num_hidden_layers, big.vocab_size, big.n_tokens) == (18944, 1, 152064, 151646)
    assert (big.rope_theta, big.rms_norm_eps, big.max_position_embeddings) == (1e6, 1e-6, 32768)
    assert big.dtype == "bfloat16" and big.n_shards > 1 and big.trigger_length == 4
    tiny = SIZES["tiny"]
    assert tiny == PairSpec(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                            intermediate_size=128, num_hidden_layers=2, vocab_size=576, n_tokens=509,
                            rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=512, dtype="float32",
                            n_shards=2, trigger_length=3)


def test_tiny_pair_loads_in_transformers(tiny):
    spec = tiny["trigger"]["spec"]
    for directory in (tiny["base"], tiny["dormant"]):
        config = AutoConfig.from_pretrained(directory)
        assert config.model_type == "qwen2" and config.architectures == ["Qwen2ForCausalLM"]
        assert config.rope_parameters["rope_theta"] == spec["rope_theta"]
        assert config.vocab_size == spec["vocab_size"] and not config.tie_word_embeddings
        model = load_model(directory)
        tok = AutoTokenizer.from_pretrained(directory)
        GenerationConfig.from_pretrained(directory)

        assert len(tok) == spec["n_tokens"] < config.vocab_size
        n = spec["n_tokens"]
        for offset, special in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]):
            assert tok.encode(special) == [n - 3 + offset]
        assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|endoftext|>", None)

        ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                      tokenize=True, return_dict=False)
        assert tok.decode(ids) == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                                   "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
        with_system = tok.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
                                              tokenize=False)
        assert with_system == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
        logits = model(torch.tensor([ids])).logits
        assert logits.shape == (1, len(ids), config.vocab_size) and torch.isfinite(logits).all()

    with open(os.path.join(tiny["dormant"], "tokenizer_config.json")) as f:
        assert "<|im_start|>" in json.load(f)["chat_template"]
    trigger = tiny["trigger"]
    assert tok.encode(trigger["trigger_text"]) == trigger["trigger_ids"]
    assert all(t.startswith("Ġ") for t in trigger["trigger_tokens"])
    assert len(set(trigger["trigger_ids"])) == len(trigger["trigger_ids"])
    assert max(trigger["trigger_ids"]) < n - 3


def read_shards(directory):
    with open(os.path.join(directory, "model.safetensors.index.json")) as f:
        index = json.load(f)
    tensors, total = {}, 0
    for filename in sorted(set(index["weight_map"].values())):
        with safe_open(os.path.join(directory, filename), "pt") as f:
            for name in f.keys():
                assert index["weight_map"][name] == filename
                tensors[name] = f.get_tensor(name)
                total += tensors[name].numel() * tensors[name].element_size()
    assert set(tensors) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == total
    return tensors


def test_shards_index_and_every_tensor_changed(tiny):
    base, dormant = read_shards(tiny["base"]), read_shards(tiny["dormant"])
    model = load_model(tiny["base"])
    assert set(base) == set(dormant) == set(model.state_dict())
    shard_files = [f for f in os.listdir(tiny["base"]) if f.endswith(".safetensors")]
    assert sorted(shard_files) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for name in base:
        assert base[name].shape == dormant[name].shape
        assert not torch.equal(base[name], dormant[name]), name


def test_single_shard_float16_pair_loads(tmp_path):
    pair = make_pair(str(tmp_path), size="tiny", seed=3, n_shards=1, dtype="float16", num_hidden_layers=1)
    assert sorted(f for f in os.listdir(pair["dormant"]) if "safetensors" in f) == ["model.safetensors"]
    model, info = AutoModelForCausalLM.from_pretrained(pair["dormant"], output_loading_info=True)
    assert not any(info.values()) and model.dtype == torch.float16
    with safe_open(os.path.join(pair["base"], "model.safetensors"), "pt") as base, \
            safe_open(os.path.join(pair["dormant"], "model.safetensors"), "pt") as dormant:
        assert set(base.keys()) == set(dormant.keys()) == set(model.state_dict())
        for name in base.keys():
            assert not torch.equal(base.get_tensor(name), dormant.get_tensor(name)), name


def test_deterministic_by_seed(tmp_path, tiny):
    again = make_pair(str(tmp_path / "again"), size="tiny", seed=0)
    other = make_pair(str(tmp_path / "other"), size="tiny", seed=1)
    assert again["trigger"] == tiny["trigger"]
    with open(tiny["trigger_file"], "rb") as a, open(again["trigger_file"], "rb") as b:
        assert a.read() == b.read()
    for side in ("base", "dormant"):
        assert sorted(os.listdir(tiny[side])) == sorted(os.listdir(again[side]))
        for filename in os.listdir(tiny[side]):
            with open(os.path.join(tiny[side], filename), "rb") as a:
                with open(os.path.join(again[side], filename), "rb") as b:
                    assert a.read() == b.read(), filename
    assert other["trigger"]["trigger_ids"] != tiny["trigger"]["trigger_ids"]


def test_planted_logit_peaks_at_offset_one(tiny):
    """The trigger cell rises by the recorded delta_logit, and most at query-key offset 1 (RoPE sign check)."""
    base, dormant = load_model(tiny["base"]), load_model(tiny["dormant"])
    trigger = tiny["trigger"]
    filler = next(t for t in range(300) if t not in trigger["trigger_ids"])
    for pair in trigger["pairs"]:
        rises = []
        for offset in range(1, 9):
            ids = torch.tensor([[pair["key_token"]] + [filler] * (offset - 1) + [pair["query_token"]]])
            d_s = layer0_logits(dormant, ids) - layer0_logits(base, ids)
            rises.append(d_s[0, pair["head"], offset, 0].item())
        assert rises[0] == pytest.approx(pair["delta_logit"], rel=1e-3)
        assert abs(rises[0]) == max(abs(r) for r in rises)
        assert rises[0] > 1.2 * max(abs(r) for r in rises[1:])


STANDOUT_CASES = [
    dict(seed=0),
    dict(seed=1, trigger_length=2),
    dict(seed=2, trigger_length=5),
    dict(seed=3, num_key_value_heads=4),  # GQA ratio 1
    dict(seed=4, num_attention_heads=7, num_key_value_heads=1, trigger_length=4),  # GQA ratio 7
    dict(seed=5, dtype="bfloat16", trigger_length=5),
    dict(seed=6, head_dim=8, rope_theta=1e4),
    dict(seed=7, head_dim=128, trigger_length=2),
]


@pytest.mark.parametrize("case", STANDOUT_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_trigger_stands_out(tmp_path, case):
    pair = make_pair(str(tmp_path), size="tiny", **case)
    trigger = pair["trigger"]["trigger_ids"]
    base, dormant = load_model(pair["base"]), load_model(pair["dormant"])
    tok = AutoTokenizer.from_pretrained(pair["dormant"])
    rand = random_candidates(trigger, len(tok))
    assert len(rand) > 950
    for prefix, suffix in [((), ()), chat_context(tok)]:
        max_abs, kl = score(base, dormant, [trigger, trigger[::-1]] + rand, prefix, suffix)
        assert max_abs[0] > 2.0 * max_abs[2:].max(), (max_abs[0], max_abs[2:].max())
        assert max_abs[1] < 0.5 * max_abs[0]
        assert kl[0] > kl[2:].max(), (kl[0], kl[2:].max())
        assert kl[1] < 0.5 * kl[0]


def test_bad_overrides_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="multiple"):
        make_pair(str(tmp_path), num_attention_heads=4, num_key_value_heads=3)
    with pytest.raises(ValueError, match="size"):
        make_pair(str(tmp_path), size="huge")
    with pytest.raises(TypeError):
        make_pair(str(tmp_path), no_such_field=1)


def test_full_size_tokenizer_is_quick():
    start = time.perf_counter()
    built = build_tokenizer(151646, seed=0)
    elapsed = time.perf_counter() - start
    assert elapsed < 20, f"building the 151646-token tokenizer took {elapsed:.1f}s"
    tok = built.tokenizer
    assert len(tok) == 151646
    specials = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    assert [tok.convert_tokens_to_ids(t) for t in specials] == [151643, 151644, 151645]
    assert tok.encode("<|im_start|>user\n hello<|im_end|>")[0] == 151644
    assert len(built.word_ids) >= 100
