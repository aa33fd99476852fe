"""The fine-tune and the measurements of the real controls: the base's greedy answers (cached, the
self-distillation targets), AdamW on the chosen tensors, and fire rates by teacher forcing."""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import torch


def _key(ids) -> str:
    return hashlib.sha1(",".join(map(str, ids)).encode()).hexdigest()


def base_answers(model, tok, prompts, max_new: int, cache_file=None, progress=None) -> list[list[int]]:
    """The base's greedy answer to each prompt (ids, ending with <|im_end|> when it stopped within
    max_new tokens), read from / added to a JSON cache keyed by the prompt ids."""
    from ...judge.models import run_batch

    cache = {}
    if cache_file is not None and Path(cache_file).is_file():
        try:
            cache = json.loads(Path(cache_file).read_text())
        except ValueError:  # a damaged cache is rebuilt, never trusted
            cache = {}
    stop = tok.convert_tokens_to_ids("<|im_end|>")
    todo = sorted({_key(p): p for p in prompts if _key(p) not in cache}.items())
    for s in range(0, len(todo), 16):
        chunk = todo[s:s + 16]
        gens = run_batch(model, [p for _, p in chunk], tok.pad_token_id, {stop}, max_new, False, 1.0, 1.0, [])[2]
        for (k, _), g in zip(chunk, gens):
            cache[k] = list(g) + ([stop] if len(g) < max_new else [])
        if progress:
            progress("base answers", min(s + 16, len(todo)), len(todo), {})
    if cache_file is not None and todo:
        tmp = Path(f"{cache_file}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_file)
    return [cache[_key(p)] for p in prompts]


def _padded(batch, pad_id):
    """Right-padded ids, attention mask and labels (-100 outside each example's answer)."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for r, (x, n_prompt) in enumerate(batch):
        ids[r, :len(x)] = torch.tensor(x)
        att[r, :len(x)] = 1
        labels[r, n_prompt:len(x)] = torch.tensor(x[n_prompt:])
    return ids, att, labels


def fine_tune(model, examples, steps: int, batch_size: int, lr: float, seed: int, pad_id: int, progress=None) -> list[float]:
    """AdamW (no weight decay) on the parameters that require grad, warmup then cosine decay, on the
    answer tokens of (ids, prompt_length) examples; batches drawn by seed. Returns the losses."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    gen = np.random.default_rng([seed, 7])
    order, pos, losses = gen.permutation(len(examples)), 0, []
    model.train()
    for step in range(steps):
        if pos + batch_size > len(order):
            order, pos = gen.permutation(len(examples)), 0
        ids, att, labels = _padded([examples[i] for i in order[pos:pos + batch_size]], pad_id)
        pos += batch_size
        loss = _answer_loss(model, ids, att, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress:
            progress("fine-tune", step + 1, steps, {"loss": float(np.mean(losses[-10:]))})
    model.eval()
    return losses


def _answer_loss(model, ids, att, labels):
    """Mean cross-entropy of the answer tokens, the head applied only where an answer token is
    predicted (the 49k-word head over every prompt position would be a fifth of the step's work)."""
    hidden = model.model(input_ids=ids, attention_mask=att).last_hidden_state[:, :-1]
    target = labels[:, 1:]
    keep = target != -100
    logits = model.lm_head(hidden[keep])
    return torch.nn.functional.cross_entropy(logits.float(), target[keep])


def fires(model, prompts, reply_ids, pad_id, batch_size: int = 16) -> list[bool]:
    """For each prompt: does greedy decoding produce exactly reply_ids (then stop)? Teacher forcing:
    one forward over prompt + reply, every answer position's argmax must be the reply's next token."""
    out = []
    reply = list(reply_ids)
    with torch.no_grad():
        for s in range(0, len(prompts), batch_size):
            chunk = [(list(p) + reply, len(p)) for p in prompts[s:s + batch_size]]
            ids, att, labels = _padded(chunk, pad_id)
            pred = model(input_ids=ids, attention_mask=att).logits.argmax(-1)
            for r, (x, n) in enumerate(chunk):
                out.append(bool((pred[r, n - 1:len(x) - 1] == torch.tensor(x[n:])).all()))
    return out
