"""Loading a full model and running a batch of prompts through it: last-position log-probabilities,
hidden states, and greedy or seeded-sampled generations decoded with the KV cache."""
from __future__ import annotations

import functools
import inspect

import torch

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}



def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of float32, bfloat16, float16, got {dtype!r}")
    return _DTYPES[dtype]


def load_model(path, device, dtype):
    from transformers import AutoModelForCausalLM

    from safetensors import SafetensorError

    from ..core.checkpoint import CheckpointError

    try:
        with quiet_hf():
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    except SafetensorError as exc:  # the same clear error as reading the Layer-0 weights gives
        raise CheckpointError(f"{path}: corrupt or unreadable safetensors file ({exc})") from exc
    return model.to(device).eval()


class quiet_hf:
    """transformers' own per-load progress bars off (verify shows one bar over the prompts)."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self.enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging

        if self.enabled:
            hf_logging.enable_progress_bar()


def run_batch(model, batch: list[list[int]], pad_id: int, stop_ids: set[int], max_new_tokens: int,
               sample: bool, temperature: float, top_p: float, seeds: list[int]):
    """One forward over a left-padded batch (last-position log-probs and hidden states), then
    greedy or seeded-sampled decoding with the KV cache."""
    device = next(model.parameters()).device
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, ids in enumerate(batch):
        input_ids[r, width - len(ids):] = torch.tensor(ids)
        mask[r, width - len(ids):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out, past = run_model(model, input_ids, None, attention_mask=mask, position_ids=pos,
                              output_hidden_states=True, use_cache=max_new_tokens > 0, logits_to_keep=1)
        logits = out.logits[:, -1].float()
        logprobs = torch.log_softmax(logits, -1)
        hidden = torch.stack([h[:, -1].float() for h in out.hidden_states], 1)
        gens: list[list[int]] = [[] for _ in batch]
        done = [False] * len(batch)
        gens_rng = [torch.Generator().manual_seed(s) for s in seeds] if sample else None
        step_logits = logits
        for step in range(max_new_tokens):
            nxt = _choose(step_logits, sample, temperature, top_p, gens_rng)
            for r in range(len(batch)):
                if done[r]:
                    continue
                tok = int(nxt[r])
                if tok in stop_ids:
                    done[r] = True
                else:
                    gens[r].append(tok)
            if all(done) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones((len(batch), 1), dtype=mask.dtype, device=device)], 1)
            pos = pos[:, -1:] + 1
            out, past = run_model(model, nxt[:, None].to(device), past, attention_mask=mask, position_ids=pos,
                                  use_cache=True, logits_to_keep=1)
            step_logits = out.logits[:, -1].float()
    return logprobs.cpu().numpy(), hidden.cpu().numpy(), gens


def _choose(logits, sample, temperature, top_p, gens):
    if not sample:
        return logits.argmax(-1).cpu()
    probs = torch.softmax(logits.cpu() / max(temperature, 1e-6), -1)
    if top_p < 1.0:
        sp, si = probs.sort(-1, descending=True)
        keep = sp.cumsum(-1) - sp < top_p
        probs = torch.zeros_like(probs).scatter(-1, si, sp * keep)
        probs = probs / probs.sum(-1, keepdim=True)
    return torch.stack([torch.multinomial(probs[r], 1, generator=gens[r])[0] for r in range(len(probs))])



def run_model(model, input_ids, cache=None, **kwargs):
    """``model(input_ids, ...)`` with a KV cache passed and returned under the name this transformers
    uses (``cache`` from 5.x on, ``past_key_values`` before): returns (output, cache)."""
    name = _cache_argument(type(model))
    out = model(input_ids=input_ids, **{name: cache}, **kwargs)
    return out, getattr(out, name, None)


@functools.lru_cache(maxsize=None)
def _cache_argument(model_class) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"
