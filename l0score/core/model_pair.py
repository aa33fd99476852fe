"""A base/dormant pair: both models' Layer-0 weights, their shared config, and the tokenizer."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import Layer0Config, Layer0Weights, check_compatible, load_layer0
from .template import template_structure


@dataclass
class ModelPair:
    base: Layer0Weights
    dormant: Layer0Weights
    tokenizer: object | None = None
    special_ids: frozenset[int] = field(default_factory=frozenset)
    # the chat template's structural pieces (role names, the newline after a role tag; core.template)
    template_ids: frozenset[int] = field(default_factory=frozenset)

    @property
    def config(self) -> Layer0Config:
        return self.base.config

    @property
    def n_tokens(self) -> int:
        """Embedding rows that are real tokens; rows past it are padding (Qwen2-7B: 151646 of 152064)."""
        if self.tokenizer is None:
            return self.config.vocab_rows
        return min(len(self.tokenizer), self.config.vocab_rows)

    def real_token_ids(self, allow_template_tokens: bool = False) -> torch.Tensor:
        """Real, non-special token ids (padding rows and special tokens excluded): every search pool's default.
        The chat template's structural pieces are excluded too unless `allow_template_tokens`: a
        candidate that forges a turn boundary changes any chat model's answer and says nothing about
        a backdoor."""
        ids = torch.arange(self.n_tokens)
        drop = self.special_ids if allow_template_tokens else self.special_ids | self.template_ids
        if drop:
            ids = ids[~torch.isin(ids, torch.tensor(sorted(drop)))]
        return ids

    @classmethod
    def load(cls, base: str | os.PathLike, dormant: str | os.PathLike) -> "ModelPair":
        b, d = load_layer0(base), load_layer0(dormant)
        check_compatible(b, d)
        tok_d, tok_b = load_tokenizer(d.path), load_tokenizer(b.path)
        if tok_d is not None and tok_b is not None and tok_d.get_vocab() != tok_b.get_vocab():
            raise ValueError(f"the base and dormant tokenizers map tokens to different ids ({b.path} vs {d.path}): "
                             "candidates are token ids, so both models must share one vocabulary")
        tokenizer = tok_d or tok_b
        specials = frozenset(tokenizer.all_special_ids) if tokenizer is not None else frozenset()
        if tokenizer is not None:
            specials |= {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        return cls(b, d, tokenizer, frozenset(specials), template_structure(tokenizer).ids)


def load_tokenizer(model_dir: Path):
    """transformers' AutoTokenizer from the directory, or None when it ships no tokenizer."""
    if not any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
