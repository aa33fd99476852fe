"""`Scorer`: the public API (docs/api.md). Loads a pair, caches its template context, dispatches a
validated batch to a backend and assembles `Scores`."""
from __future__ import annotations

import copy
import os

import torch

from .core.batch import pack
from .core.context import Context
from .core.model_pair import ModelPair
from .core.protocols import ExtensionKernel
from .core.reference import BASELINES, REGIONS, bias_baseline, rope_angles, rotate
from .core.types import METRICS, PackedBatch, RowStats, Scores, merge_rows
from .core.template import Template
from .backends.token_table import DirectProjector, TokenTable
from .backends.torch import TorchBackend

BACKENDS = ("auto", "torch", "triton", "native")
EXTENSION_SIDES = ("right", "left")
_TABLE_AUTO_LIMIT = 8 << 30  # bytes of a float32 table pair above which "auto" uses the direct path


class Scorer:
    kind = "layer0"  # what `objective` says in search results (the full-model scorer says "full")
    metrics = METRICS

    def __init__(self, pair: ModelPair, device=None, backend: str = "auto", template=None, heads=None,
                 region: str = "candidate", baseline: str = "none", offsets=(), table: bool | None = None,
                 table_dtype: str = "float32"):
        cfg = pair.config
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if region not in REGIONS:
            raise ValueError(f"region must be one of {', '.join(REGIONS)}, got {region!r}")
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
        self.pair = pair
        self.device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.heads = _check_heads(heads, cfg.num_heads)
        self.offsets = _check_offsets(offsets, cfg.max_positions)
        self.region, self.baseline_kind = region, baseline
        self._heads_t = torch.tensor(self.heads, device=self.device)
        self._offsets_t = torch.tensor(self.offsets, dtype=torch.int64, device=self.device)
        if baseline == "bias":
            self._baseline = bias_baseline(pair.base, pair.dormant, self._heads_t, cfg.max_positions, self.device)
        else:
            self._baseline = torch.zeros(len(self.heads), cfg.max_positions, device=self.device)
        self.backend = self._make_backend(backend, table, table_dtype)
        self.template = Template.resolve(template, pair.tokenizer)
        self._contexts: dict[Template, Context] = {}
        self.context(self.template)
        self._scored = [0]  # candidates scored, shared with with_heads() views (one list object)

    @classmethod
    def from_pretrained(cls, base: str | os.PathLike, dormant: str | os.PathLike, **kwargs) -> "Scorer":
        """base/dormant: local model directories or hub ids already in the local cache."""
        return cls(ModelPair.load(base, dormant), **kwargs)

    @classmethod
    def for_heatmaps(cls, base, dormant, template_ids=None) -> "Scorer":
        """The torch reference on CPU without a table (a few candidates, no build time): what draws a
        report's Layer-0 dS heatmaps. template_ids: (prefix ids, suffix ids) of the search that found
        the candidates; else the chat template when the tokenizer has one, else raw."""
        pair = ModelPair.load(base, dormant)
        if template_ids is not None:
            template = Template(*template_ids)
        elif pair.tokenizer is not None and getattr(pair.tokenizer, "chat_template", None):
            template = "chat"
        else:
            template = "raw"
        return cls(pair, device="cpu", backend="torch", table=False, template=template)

    def _make_backend(self, backend: str, table: bool | None, table_dtype: str):
        """Each backend exposes lookup(ids) (pre-RoPE float32 q/k, used for contexts) and score_rows."""
        cfg = self.pair.config
        if backend == "auto":
            backend = "triton" if self.device.type == "cuda" else "torch"
            if self.device.type == "cpu":
                from .backends import native as native_backend

                backend = "native" if native_backend.available() else "torch"
        if backend == "native":
            from .backends.native import NativeBackend

            native = NativeBackend.create(self.pair, self.device, table, table_dtype)
            self.table = native.table
            return native
        if backend == "triton":
            from .backends.triton import TritonBackend

            triton_backend = TritonBackend.create(self.pair, self.device, table, table_dtype)
            self.table = triton_backend.table
            return triton_backend
        if table is None:
            table = 2 * cfg.vocab_rows * (cfg.num_heads + cfg.num_kv_heads) * cfg.head_dim * 4 <= _TABLE_AUTO_LIMIT
        self.table = TokenTable.build(self.pair, table_dtype, self.device) if table else None
        lookup = self.table.lookup if table else DirectProjector(self.pair, self.device).lookup
        return TorchBackend(lookup, cfg)

    def context(self, template: Template) -> Context:
        """The cached context of a template (prefix keys and prefix-row stats), built on first use."""
        if template not in self._contexts:
            for name, ids in (("prefix", template.prefix_ids), ("suffix", template.suffix_ids)):
                bad = [i for i in ids if i >= self.pair.config.vocab_rows]
                if bad:
                    raise ValueError(f"template {name} id {bad[0]} outside [0, {self.pair.config.vocab_rows})")
            if len(template) >= self.pair.config.max_positions:
                raise ValueError(f"template of {len(template)} tokens leaves no room under max_position_embeddings")
            self._contexts[template] = Context.build(template, self.backend.lookup, self.pair.config, self._heads_t,
                                                     self._baseline, self._offsets_t, self.device)
        return self._contexts[template]

    def pack(self, token_ids, lengths=None, template: Template | None = None) -> PackedBatch:
        """Validate and pack candidates for a template (raises ValueError/TypeError naming the candidate)."""
        ctx = self.context(template or self.template)
        cfg = self.pair.config
        return pack(token_ids, lengths, ctx.template.suffix_ids, cfg.vocab_rows, cfg.max_positions - len(ctx.template))

    def score_batch(self, token_ids, lengths=None, template: Template | None = None) -> Scores:
        """Score candidates (list of lists, or a 2-D integer array with optional lengths)."""
        ctx = self.context(template or self.template)
        stats = self._score_packed(self.pack(token_ids, lengths, ctx.template), ctx)
        return self._scores(stats, ctx)

    def score_extensions(self, prefixes, pool=None, template: Template | None = None, side: str = "right") -> Scores:
        """Scores of `prefix + [t]` for every prefix and every token t of pool, computed incrementally.

        prefixes: list of candidate prefixes (possibly empty); pool: 1-D token ids (default: every
        real, non-special token). Fields are flattened: row p * len(pool) + n is prefixes[p] + [pool[n]].
        The prefix's own rows are scored once; only the new row and the suffix rows are computed per t.

        side="left" scores `[t] + prefix` instead (same row order). Every row of the fragment then sees
        the new key t, so nothing of the fragment's rows can be reused: it runs the general kernel on
        the packed batch (docs/search.md has the measured rates of both forms).
        """
        if side not in EXTENSION_SIDES:
            raise ValueError(f"side must be one of {', '.join(EXTENSION_SIDES)}, got {side!r}")
        ctx = self.context(template or self.template)
        pool = _as_pool(self.default_pool() if pool is None else pool, self.pair.config.vocab_rows)
        if side == "left":
            return self._score_prepends(prefixes, pool, ctx)
        kernel = self.backend.extension_rows if isinstance(self.backend, ExtensionKernel) else None
        pool_batch = None  # the general path's [t] + suffix rows, packed on first use
        parts = []
        for n, prefix in enumerate(prefixes):
            ext, own_rows = ctx, None
            if len(prefix):
                try:
                    head = self.pack([prefix], None, ctx.template)
                except (ValueError, TypeError) as exc:
                    raise type(exc)(f"prefix {n}: {exc}") from None
                c = int(head.cand_len[0])
                room = self.pair.config.max_positions - len(ctx.template)
                if c + 1 > room:
                    raise ValueError(f"prefix {n}: extending {c} tokens exceeds the {room} positions left by max_position_embeddings")
                own_rows = self._score_packed(PackedBatch(head.ids[:, :c], head.cand_len, head.cand_len.clone()), ctx)
                ext = ctx.extend(self._rotated_keys(head.ids[0, :c], ctx.prefix_len))
            # the kernel merges the prefix's own rows itself; it returns None when it cannot run (no table)
            stats = None if kernel is None else kernel(pool, ext, self._heads_t, self.region, self._baseline,
                                                       self._offsets_t, own_rows)
            if stats is None:
                if pool_batch is None:
                    pool_batch = self.pack(pool[:, None], None, ctx.template)
                stats = self._score_packed(pool_batch, ext)
                stats = stats if own_rows is None else merge_rows(stats, own_rows)
            parts.append(stats)
        stats = RowStats.cat(parts)
        return self._scores(stats, ctx)

    @property
    def evaluations(self) -> int:
        """Candidates scored so far by this scorer and its with_heads() views."""
        return self._scored[0]

    def _scores(self, stats: RowStats, ctx: Context) -> Scores:
        scores = Scores.from_stats(self._with_prefix_rows(stats, ctx), self.heads, self.offsets)
        self._scored[0] += len(scores)
        return scores

    def _score_prepends(self, fragments, pool: torch.Tensor, ctx: Context) -> Scores:
        parts = []
        for n, fragment in enumerate(fragments):
            try:
                tail = torch.as_tensor(list(fragment), dtype=torch.int64).reshape(1, -1)
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"prefix {n}: {exc}") from None
            cands = torch.cat((pool[:, None], tail.expand(len(pool), -1)), 1)
            parts.append(self._score_packed(self.pack(cands, None, ctx.template), ctx))
        return self._scores(RowStats.cat(parts), ctx)

    @property
    def baseline_table(self) -> torch.Tensor:
        """[len(heads), max_positions]: the content-free dS per scored head and offset that max-type
        metrics subtract (zeros unless baseline="bias")."""
        return self._baseline

    def with_heads(self, heads) -> "Scorer":
        """The same pair, backend (tables), template and settings, scoring only `heads`.

        Cheap: nothing is rebuilt but the template contexts (a search restricted to the heads an
        analysis singled out runs this instead of loading a second scorer)."""
        view = copy.copy(self)
        view.heads = _check_heads(heads, self.pair.config.num_heads)
        view._heads_t = torch.tensor(view.heads, device=self.device)
        rows = [self.heads.index(h) for h in view.heads if h in self.heads]
        if len(rows) == len(view.heads):
            view._baseline = self._baseline[rows]
        elif self.baseline_kind == "bias":
            view._baseline = bias_baseline(self.pair.base, self.pair.dormant, view._heads_t,
                                           self.pair.config.max_positions, self.device)
        else:
            view._baseline = torch.zeros(len(view.heads), self.pair.config.max_positions, device=self.device)
        view._contexts = {}
        view.context(view.template)
        return view

    def describe(self) -> dict:
        """The settings a resumed search must match (prefix ids, -1 for the candidate, suffix ids)."""
        return {"template": list(self.template.prefix_ids) + [-1] + list(self.template.suffix_ids)}

    def default_pool(self) -> torch.Tensor:
        """Real, non-special token ids (padding rows and special tokens excluded)."""
        return self.pair.real_token_ids()

    def _rotated_keys(self, ids: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.pair.config
        _, kb, _, kd = self.backend.lookup(ids.to(self.device))
        cos, sin = rope_angles(start + torch.arange(len(ids), device=self.device), cfg.head_dim, cfg.rope_theta)
        return rotate(kb, cos[:, None], sin[:, None]), rotate(kd, cos[:, None], sin[:, None])

    def _score_packed(self, batch: PackedBatch, ctx: Context) -> RowStats:
        width = batch.ids.shape[1]
        chunk = max(1, int(4e7 // (len(self.heads) * width * (ctx.prefix_len + width))))
        parts = [self.backend.score_rows(batch.slice(s, s + chunk), ctx, self._heads_t, self.region,
                                         self._baseline, self._offsets_t) for s in range(0, len(batch), chunk)]
        return RowStats.cat(parts)

    def _with_prefix_rows(self, stats: RowStats, ctx: Context) -> RowStats:
        if self.region == "all" and ctx.prefix_stats is not None:
            return merge_rows(stats, ctx.prefix_stats)
        return stats


def _as_pool(pool, vocab_rows: int) -> torch.Tensor:
    """A validated 1-D int64 CPU tensor of pool token ids."""
    arr = torch.as_tensor(pool)
    if arr.ndim != 1 or arr.numel() == 0:
        raise ValueError(f"pool must be a non-empty 1-D list of token ids, got shape {tuple(arr.shape)}")
    if arr.is_floating_point() or arr.dtype == torch.bool:
        raise TypeError(f"pool ids must be integers, got dtype {arr.dtype}")
    arr = arr.to("cpu", torch.int64)
    bad = arr[(arr < 0) | (arr >= vocab_rows)]
    if len(bad):
        raise ValueError(f"pool id {int(bad[0])} outside [0, {vocab_rows})")
    return arr


def _check_heads(heads, n_heads: int) -> tuple[int, ...]:
    if heads is None:
        return tuple(range(n_heads))
    if isinstance(heads, int):
        heads = [heads]
    out = []
    for h in heads:
        if isinstance(h, bool) or not hasattr(h, "__index__"):
            raise TypeError(f"heads must be integers, got {h!r}")
        if not 0 <= int(h) < n_heads:
            raise ValueError(f"head {int(h)} outside [0, {n_heads})")
        out.append(int(h))
    if not out or len(set(out)) != len(out):
        raise ValueError(f"heads must be a non-empty list of distinct head ids, got {list(heads)}")
    return tuple(sorted(out))


def _check_offsets(offsets, max_positions: int) -> tuple[int, ...]:
    out = []
    for r in offsets:
        if isinstance(r, bool) or not hasattr(r, "__index__"):
            raise TypeError(f"band offsets must be integers, got {r!r}")
        if not 0 <= int(r) < max_positions:
            raise ValueError(f"band offset {int(r)} outside [0, {max_positions})")
        out.append(int(r))
    return tuple(out)
