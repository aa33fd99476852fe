"""backend="native": the fused C++ scorer (kernels/cpu, module l0score._native) on a token table.

Token-table mode: per-token pre-RoPE q/k of both models ([V, H, D] and [V, KV, D], float32 or
bfloat16), built by the native blocked GEMM (RMSNorm + Q/K projection) and cached on disk
(table_cache.py). Per template the context's rotated prefix keys are laid out once for the kernel;
per call the kernel gathers each candidate's rows, applies RoPE and reduces every docs/metrics.md metric
(reference.score_rows semantics, tested against it).

Direct mode (table=False, for tables that do not fit): each call projects only the batch's distinct
tokens (torch, float32) into a small table and runs the same kernel on it.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from .. import _native
from . import table_cache
from ..core.context import Context
from ..core.model_pair import ModelPair
from ..core.reference import rope_angles
from ..core.types import PackedBatch, RowStats
from .token_table import TABLE_DTYPES, DirectProjector, TokenTable

LANES = 16
_TABLE_AUTO_LIMIT = 8 << 30  # bytes of a float32 table pair above which table=None picks the direct path
_BUILD_CHUNK = 8192  # embedding rows per native build call


def available() -> bool:
    """Whether the compiled module has the native scorer."""
    return bool(getattr(_native, "has_scorer", False))


def _kernel_view(t: torch.Tensor) -> np.ndarray:
    """[V, X, D] table -> zero-copy 2-D numpy [V, X*D] (bfloat16 as raw int16 bits)."""
    flat = t.reshape(t.shape[0], -1)
    if t.dtype == torch.bfloat16:
        flat = flat.view(torch.int16)
    return flat.numpy()


def build_table(weights, dtype: str = "float32", progress: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One model's token table (q [V, H, D], k [V, KV, D]) with the native blocked GEMM."""
    if dtype not in TABLE_DTYPES:
        raise ValueError(f"table dtype must be one of {sorted(TABLE_DTYPES)}, got {dtype!r}")
    cfg = weights.config
    V, H, KV, D = cfg.vocab_rows, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    w = torch.cat((weights.wq, weights.wk)).float().contiguous()
    packed = _native.pack_weights(w.numpy())
    del w
    bias = torch.cat((weights.bq, weights.bk)).float().numpy()
    norm = weights.norm.float().numpy()
    q, k = table_cache.empty_table((V, H, D), (V, KV, D), dtype)
    qv, kv = _kernel_view(q), _kernel_view(k)
    starts = range(0, V, _BUILD_CHUNK)
    if progress is None:
        progress = V * cfg.hidden_size > 1e8
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"token table {weights.path.name} ({dtype})", unit="chunk", leave=False)
    for start in starts:
        x = weights.embed[start : start + _BUILD_CHUNK].float().contiguous().numpy()
        _native.build_rows(x, norm, cfg.rms_norm_eps, packed, bias, (H + KV) * D, H * D, qv, kv, start)
    return q, k


def load_table(pair: ModelPair, dtype: str = "float32", use_cache: bool = True) -> tuple[TokenTable, dict]:
    """Both models' tables from the disk cache, or built natively and cached; plus timing info."""
    out, info = [], {}
    for role, w in (("base", pair.base), ("dormant", pair.dormant)):
        q, k, ci = table_cache.load_or_build(w, dtype, lambda w=w: build_table(w, dtype), use_cache)
        out += [q, k]
        info[role] = ci
    return TokenTable(*out), info


class NativeBackend:
    """Exposes lookup(ids) (pre-RoPE float32 q/k) and score_rows(...) -> RowStats (the backend contract)."""

    name = "native"

    def __init__(self, pair: ModelPair, table: TokenTable | None, table_info: dict | None = None):
        self.pair, self.cfg = pair, pair.config
        self.table, self.table_info = table, table_info or {}
        self._direct = None if table is not None else DirectProjector(pair, torch.device("cpu"))
        self._views = None if table is None else tuple(_kernel_view(t) for t in (table.q_base, table.k_base, table.q_dorm, table.k_dorm))
        self._prepared: OrderedDict[int, tuple] = OrderedDict()
        self._cos = self._sin = None

    @classmethod
    def create(cls, pair: ModelPair, device, table: bool | None | TokenTable = None, table_dtype: str = "float32",
               use_cache: bool = True) -> "NativeBackend":
        """table: True (load from the disk cache or build), False (direct mode), None (True if the
        float32 pair fits in 8 GB), or an existing TokenTable of this pair to share."""
        if not available():
            raise RuntimeError("l0score._native has no scorer: rebuild with `pip install -e .`")
        device = torch.device("cpu") if device is None else torch.device(device)
        if device.type != "cpu":
            raise ValueError(f"backend 'native' runs on the CPU, not {device}")
        if table_dtype not in TABLE_DTYPES:
            raise ValueError(f"table dtype must be one of {sorted(TABLE_DTYPES)}, got {table_dtype!r}")
        cfg = pair.config
        if isinstance(table, TokenTable):
            want = [(cfg.vocab_rows, cfg.num_heads, cfg.head_dim), (cfg.vocab_rows, cfg.num_kv_heads, cfg.head_dim)] * 2
            got = [tuple(t.shape) for t in (table.q_base, table.k_base, table.q_dorm, table.k_dorm)]
            if got != want or any(t.dtype not in TABLE_DTYPES.values() or t.device.type != "cpu" or not t.is_contiguous()
                                  for t in (table.q_base, table.k_base, table.q_dorm, table.k_dorm)):
                raise ValueError(f"token table shapes {got} do not match this pair {want} (or not contiguous CPU float32/bfloat16)")
            return cls(pair, table)
        if table is None:
            table = 2 * cfg.vocab_rows * (cfg.num_heads + cfg.num_kv_heads) * cfg.head_dim * 4 <= _TABLE_AUTO_LIMIT
        if not table:
            return cls(pair, None)
        tt, info = load_table(pair, table_dtype, use_cache)
        return cls(pair, tt, info)

    @property
    def table_dtype(self) -> str | None:
        return None if self.table is None else str(self.table.q_base.dtype).replace("torch.", "")

    def lookup(self, ids: torch.Tensor):
        ids = ids.cpu()
        return self.table.lookup(ids) if self.table is not None else self._direct.lookup(ids)

    # -- per-context and per-call preparation -------------------------------------------------
    def _prefix_tile(self, ctx: Context) -> np.ndarray:
        """Rotated prefix keys as [2, KV, D, ceil8(p)] (keys last, zero padded), cached per context."""
        key = id(ctx)
        hit = self._prepared.get(key)
        if hit is not None and hit[0] is ctx:
            self._prepared.move_to_end(key)
            return hit[1]
        cfg, p = self.cfg, ctx.prefix_len
        ppad = -(-p // 8) * 8
        tile = torch.zeros(2, cfg.num_kv_heads, cfg.head_dim, ppad)
        if p:
            keys = torch.stack([k.detach().float().cpu() for k in ctx.prefix_keys])  # [2, p, KV, D]
            tile[..., :p] = keys.permute(0, 2, 3, 1)
        arr = tile.numpy()
        self._prepared[key] = (ctx, arr)
        while len(self._prepared) > 16:
            self._prepared.popitem(last=False)
        return arr

    def _rope(self, npos: int) -> tuple[np.ndarray, np.ndarray]:
        """cos/sin [>= npos, D/2] exactly as the reference computes them (grown on demand)."""
        if self._cos is None or self._cos.shape[0] < npos:
            n = max(npos, 256, 0 if self._cos is None else 2 * self._cos.shape[0])
            n = min(n, self.cfg.max_positions + 1)
            n = max(n, npos)
            cos, sin = rope_angles(torch.arange(n), self.cfg.head_dim, self.cfg.rope_theta)
            self._cos, self._sin = cos.contiguous().numpy(), sin.contiguous().numpy()
        return self._cos, self._sin

    def score_rows(self, batch: PackedBatch, ctx: Context, heads, region, baseline, offsets) -> RowStats:
        ids = batch.ids.cpu()
        cand_len = batch.cand_len.cpu()
        dep_len = batch.dep_len.cpu()
        suffix = ctx.suffix_ids.cpu()
        p = ctx.prefix_len
        max_dep = int(dep_len.max())
        ids = ids[:, :max_dep].contiguous()
        rev = _reversed_baseline(baseline, p + max_dep - 1)
        cos, sin = self._rope(p + max_dep)
        if self.table is not None:
            tables = self._views
        else:  # direct mode: a table of just this batch's distinct tokens
            valid = torch.arange(ids.shape[1])[None, :] < dep_len[:, None]
            uniq = torch.unique(torch.cat((ids[valid], suffix)))
            qb, kb, qd, kd = self._direct.lookup(uniq)
            tables = tuple(t.reshape(len(uniq), -1).contiguous().numpy() for t in (qb, kb, qd, kd))
            ids = torch.searchsorted(uniq, ids.clamp(min=0)).clamp(max=len(uniq) - 1)
            ids = torch.where(valid, ids, 0)
            suffix = torch.searchsorted(uniq, suffix)
        hm, hp, hk, band = _native.score_table(
            *tables, self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim,
            ids.numpy(), cand_len.numpy(), dep_len.numpy(), suffix.numpy(),
            heads.cpu().numpy(), self._prefix_tile(ctx), p, ctx.cand_start, cos, sin, rev,
            offsets.cpu().numpy(), region == "all")
        return RowStats(torch.from_numpy(hm), torch.from_numpy(hp), torch.from_numpy(hk), torch.from_numpy(band))

    def extension_rows(self, pool: torch.Tensor, ctx: Context, heads, region, baseline, offsets,
                       earlier: RowStats | None = None) -> RowStats | None:
        """The rows of the one-token candidates [t], t in pool, in a context whose cached prefix ends
        with a candidate's first tokens, merged with `earlier` (those tokens' own rows, [1, ...]): what
        score_rows and merge_rows give, by the dedicated kernel (kernels/cpu/extend.cpp). None on the
        direct path (no table): the caller uses score_rows."""
        if self.table is None:
            return None
        p, s = ctx.prefix_len, len(ctx.suffix_ids)
        cos, sin = self._rope(p + 1 + s)
        empty = np.zeros(0, dtype=np.float32)
        prior = (empty, np.zeros(0, dtype=np.int64), empty, empty) if earlier is None else tuple(
            t[0].contiguous().numpy() for t in (earlier.head_max, earlier.head_pos, earlier.head_kl, earlier.band))
        hm, hp, hk, band = _native.extend_table(
            *self._views, self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim,
            pool.cpu().numpy(), ctx.suffix_ids.cpu().numpy(), heads.cpu().numpy(), self._prefix_tile(ctx), p,
            ctx.cand_start, cos, sin, _reversed_baseline(baseline, p + s), offsets.cpu().numpy(), region == "all",
            *prior)
        return RowStats(torch.from_numpy(hm), torch.from_numpy(hp), torch.from_numpy(hk), torch.from_numpy(band))

    def pair_topk(self, pool: torch.Tensor, head: int, offset: int, top: int, shift: float = 0.0):
        """The hook `l0score.search.pair_scan` dispatches to: the exact top `top` cells of |dS - shift|
        of query head `head` at offset `offset` over the pool (offset 0: a == b only), as (signed values,
        query index, key index into pool), best first, by kernels/cpu/pair_scan.cpp. On the direct path
        the pool's rows of this head and its KV head are projected first (kept for the next offsets)."""
        cfg = self.cfg
        pool = torch.as_tensor(pool, dtype=torch.int64).cpu()
        if pool.dim() != 1 or len(pool) == 0:
            raise ValueError("pool must be a non-empty 1-D integer tensor")
        if int(pool.min()) < 0 or int(pool.max()) >= cfg.vocab_rows:
            raise ValueError(f"pool token ids must be in [0, {cfg.vocab_rows})")
        if not 0 <= int(head) < cfg.num_heads:
            raise ValueError(f"head {head} outside [0, {cfg.num_heads})")
        cos, sin = rope_angles(torch.tensor([int(offset)]), cfg.head_dim, cfg.rope_theta)
        if self.table is not None:
            tables, n_heads, n_kv, h, ids = self._views, cfg.num_heads, cfg.num_kv_heads, int(head), pool
        else:
            tables, n_heads, n_kv, h, ids = self._pool_rows(pool, int(head)), 1, 1, 0, torch.arange(len(pool))
        values, q_idx, k_idx = _native.pair_topk_table(*tables, n_heads, n_kv, cfg.head_dim, ids.numpy(), h,
                                                       int(offset), int(top), float(shift), cos[0].numpy(), sin[0].numpy())
        return torch.from_numpy(values), torch.from_numpy(q_idx), torch.from_numpy(k_idx)

    def _pool_rows(self, pool: torch.Tensor, head: int, chunk: int = 4096) -> tuple[np.ndarray, ...]:
        """Direct path: the pool's q rows of `head` and k rows of its KV head, per model ([N, D] fp32, in
        the table order q_base, k_base, q_dorm, k_dorm), projected in chunks; the last (pool, head) is kept."""
        cached = getattr(self, "_pool_cache", None)
        if cached is not None and cached[1] == head and torch.equal(cached[0], pool):
            return cached[2]
        g = head // self.cfg.group
        parts = [[] for _ in range(4)]
        for start in range(0, len(pool), chunk):
            qb, kb, qd, kd = self._direct.lookup(pool[start : start + chunk])
            for part, t in zip(parts, (qb[:, head], kb[:, g], qd[:, head], kd[:, g])):
                part.append(t.float())
        rows = tuple(torch.cat(p).contiguous().numpy() for p in parts)
        self._pool_cache = (pool.clone(), head, rows)
        return rows


def _reversed_baseline(baseline: torch.Tensor, M: int) -> np.ndarray:
    """The kernels' baseline layout: rev[h, M - r] = baseline[h, r] for rows up to position M (and
    LANES of zero slack), or an empty array when the baseline is zero (the kernels then skip it)."""
    base = baseline.detach().float().cpu()[:, : M + 1]
    if not bool(base.any()):
        return np.zeros((0, 0), dtype=np.float32)
    rev = torch.zeros(base.shape[0], M + 1 + LANES)
    rev[:, : M + 1] = base.flip(1)
    return rev.numpy()
