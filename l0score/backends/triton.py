"""backend="triton": the Triton kernels of kernels/triton (l0score.kernels) behind the backend contract.

On CUDA the kernels compile for the GPU; on CPU they run under the Triton interpreter
(TRITON_INTERPRET=1 must be set before l0score.kernels is first imported), which is how they are
tested here. Everything the kernels read stays resident on the device between calls: the token
table (both models interleaved per token, [V, 2, (H + KV) * D] in fp32 or bf16) or, on the direct
path, the checkpoint tensors (embedding, norm, cat(Wq, Wk), cat(bq, bk)); plus RoPE cos/sin tables
[max_positions, D/2] computed exactly as the reference does. A `score_rows` call does no host
synchronisation: ids are range-checked on their host copy before the upload, the row tile comes
from host-side lengths, and outputs stay on the device. (The first call with a new baseline tensor
reads it once to decide whether it is all zeros, i.e. whether the kernel needs HAS_BASELINE.)
"""
from __future__ import annotations

import os
import weakref

import torch

from ..core.context import Context
from ..core.model_pair import ModelPair
from ..core.reference import rope_angles
from ..core.types import PackedBatch, RowStats
from .token_table import TokenTable

TABLE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_CPU_TABLE_LIMIT = 8 << 30  # bytes; same rule as the torch backend's automatic choice
_GPU_TABLE_FRACTION = 0.6  # of free device memory, when table=None on CUDA


_RESIDENT: dict[int, dict] = {}  # id(pair) -> {(device, table dtype): resident tensors}, dropped with the pair


def _resident(pair: ModelPair) -> dict:
    """Device tensors built for a pair, shared by every Scorer over the same ModelPair object (two
    scorers with different heads/regions must not hold two copies of a multi-GB table)."""
    key = id(pair)
    if key not in _RESIDENT:
        _RESIDENT[key] = {}
        weakref.finalize(pair, _RESIDENT.pop, key, None)
    return _RESIDENT[key]


def _interpret_env() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _kernels():
    """Import the kernel modules (decorated as interpreted functions iff TRITON_INTERPRET is set then)."""
    from ..kernels import direct, score, token_table
    from ..kernels._launch import interpreting

    return token_table, score, direct, interpreting(score._score_kernel)


class TritonBackend:
    name = "triton"

    def __init__(self, pair: ModelPair, device: torch.device, table: torch.Tensor | None, weights, rope, dot_precision):
        cfg = pair.config
        self.cfg, self.device = cfg, device
        self.packed = table  # [V, 2, (H + KV) * D]: token v's q|k rows of both models; None on the direct path
        self.table = None if table is None else _views(table, cfg)  # the same memory as a TokenTable
        self.weights = weights  # ((embed, norm, w, b) base, (...) dormant) or None (table path)
        self.rope_cos, self.rope_sin = rope
        self.dot_precision = dot_precision
        self.want_kl = True
        self._baseline_seen: tuple[torch.Tensor, bool] | None = None
        self._mods = _kernels()

    @classmethod
    def create(cls, pair: ModelPair, device, table: bool | None = None, table_dtype: str = "float32",
               dot_precision: str = "ieee") -> "TritonBackend":
        device = torch.device(device)
        if table_dtype not in TABLE_DTYPES:
            raise ValueError(f"table dtype must be one of {sorted(TABLE_DTYPES)}, got {table_dtype!r}")
        if device.type == "cpu":
            if not _interpret_env():
                raise RuntimeError("backend='triton' on CPU needs TRITON_INTERPRET=1 in the environment before "
                                   "l0score.kernels (or triton kernels) are imported; use backend='native' or 'torch' "
                                   "for CPU speed")
        elif device.type != "cuda":
            raise ValueError(f"backend='triton' runs on CUDA (or on CPU under TRITON_INTERPRET=1), not {device}")
        token_table, _, _, interp = _kernels()
        if device.type == "cpu" and not interp:
            raise RuntimeError("l0score.kernels was imported before TRITON_INTERPRET=1 was set; set it at process start")
        if device.type == "cuda" and interp:
            raise RuntimeError("TRITON_INTERPRET is set: the interpreter runs on CPU tensors; use device='cpu'")

        cfg = pair.config
        n_out = (cfg.num_heads + cfg.num_kv_heads) * cfg.head_dim
        dtype = TABLE_DTYPES[table_dtype]
        if table is None:
            nbytes = cfg.vocab_rows * 2 * n_out * dtype.itemsize
            if device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(device)
                table = nbytes <= _GPU_TABLE_FRACTION * free
            else:
                table = nbytes <= _CPU_TABLE_LIMIT
        cache = _resident(pair)
        if (device, "rope") not in cache:
            cos, sin = rope_angles(torch.arange(cfg.max_positions, device=device), cfg.head_dim, cfg.rope_theta)
            cache[device, "rope"] = (cos.contiguous(), sin.contiguous())
        if table:
            if (device, dtype) not in cache:
                weights = cache.get((device, "weights")) or _device_weights(pair, device)
                tab = torch.empty(cfg.vocab_rows, 2, n_out, dtype=dtype, device=device)
                for m, (embed, norm, w, b) in enumerate(weights):
                    token_table.token_table(embed, norm, w, b, cfg.rms_norm_eps, out=tab[:, m])
                cache[device, dtype] = tab
            return cls(pair, device, cache[device, dtype], None, cache[device, "rope"], dot_precision)
        if (device, "weights") not in cache:
            cache[device, "weights"] = _device_weights(pair, device)
        return cls(pair, device, None, cache[device, "weights"], cache[device, "rope"], dot_precision)

    @property
    def table_dtype(self) -> str | None:
        return None if self.packed is None else str(self.packed.dtype).replace("torch.", "")

    # -- contract -------------------------------------------------------------------------------
    def lookup(self, ids: torch.Tensor):
        """(q_base, k_base, q_dorm, k_dorm) pre-RoPE float32 rows for ids (any shape)."""
        cfg = self.cfg
        shape = tuple(ids.shape)
        flat = ids.reshape(-1).to(self.device, torch.int64)
        if self.packed is not None:
            if flat.device.type == "cpu" and flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= cfg.vocab_rows):
                raise ValueError(f"token ids must be in [0, {cfg.vocab_rows})")
            rows = self.packed[flat].float()  # [n, 2, (H + KV) * D]
            per_model = (rows[:, 0], rows[:, 1])
        else:
            token_table = self._mods[0]
            per_model = tuple(token_table.token_table(*w, cfg.rms_norm_eps, ids=flat, check_id_range=True)
                              for w in self.weights)
        hd = cfg.num_heads * cfg.head_dim
        out = []
        for r in per_model:
            out.append(r[:, :hd].reshape(*shape, cfg.num_heads, cfg.head_dim))
            out.append(r[:, hd:].reshape(*shape, cfg.num_kv_heads, cfg.head_dim))
        return tuple(out)

    def score_rows(self, batch: PackedBatch, ctx: Context, heads, region, baseline, offsets) -> RowStats:
        cfg, device = self.cfg, self.device
        _, score, direct, _ = self._mods
        ids = batch.ids
        bsz = ids.shape[0]
        if ids.device.type == "cpu" and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= cfg.vocab_rows):
            raise ValueError(f"token ids must be in [0, {cfg.vocab_rows})")
        width = int(batch.dep_len.max()) if bsz else 0
        ids = ids.to(device, torch.int32)
        cand_len = batch.cand_len.to(device, torch.int32)
        dep_len = batch.dep_len.to(device, torch.int32)
        heads32 = heads.to(device, torch.int32)
        offsets = offsets.to(device)
        pk = tuple(k.to(device, torch.float32).contiguous() for k in ctx.prefix_keys)
        base = baseline.to(device, torch.float32) if self._has_baseline(baseline) else None
        kw = dict(n_heads=cfg.num_heads, n_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, region=region,
                  want_kl=self.want_kl, max_width=width, dot_precision=self.dot_precision, check_id_range=False,
                  cand_start=getattr(ctx, "cand_start", ctx.prefix_len))
        args = (ids, cand_len, dep_len, pk, heads32, self.rope_cos, self.rope_sin, base, offsets)
        if self.packed is not None:
            out = score.score_table(self.packed[:, 0], self.packed[:, 1], *args, **kw)
        else:
            out = direct.score_direct(self.weights[0], self.weights[1], cfg.rms_norm_eps, *args, **kw)
        if out.band.shape[2]:
            band = out.band.amax(1)
        else:
            band = torch.zeros(bsz, 0, device=device)
        return RowStats(out.head_max, out.head_pos, out.head_kl, band)

    def pair_topk(self, pool: torch.Tensor, head: int, offset: int, top: int, shift: float = 0.0):
        """The hook `l0score.search.pair_scan` dispatches to: the exact top `top` cells of
        |dS - shift| of query head `head` at offset `offset` over the pool (offset 0: a == b only), as
        (values fp32, query_index int64, key_index int64) on the device, indices into pool, best first.

        kernels/triton/pair_scan.py reads the pool's rows from the resident table; on the direct path
        the pool's rows of this head (and its KV head) are projected once per (pool, head) instead."""
        cfg, device = self.cfg, self.device
        from ..kernels import pair_scan

        pool = torch.as_tensor(pool)
        if pool.dim() != 1 or pool.dtype not in (torch.int32, torch.int64):
            raise ValueError("pool must be a 1-D integer tensor")
        if pool.device.type == "cpu" and pool.numel() and (int(pool.min()) < 0 or int(pool.max()) >= cfg.vocab_rows):
            raise ValueError(f"pool token ids must be in [0, {cfg.vocab_rows})")
        if not 0 <= int(head) < cfg.num_heads:
            raise ValueError(f"head {head} outside [0, {cfg.num_heads})")
        d, g = cfg.head_dim, head // cfg.group
        if self.packed is not None:
            ids = pool.to(device, torch.int32)
            tab_b, tab_d = self.packed[:, 0], self.packed[:, 1]
            q_col, k_col = head * d, (cfg.num_heads + g) * d
        else:
            tab_b, tab_d = self._pool_rows(pool, head)
            ids = torch.arange(len(pool), dtype=torch.int32, device=device)
            q_col, k_col = 0, d
        out = pair_scan.pair_topk(tab_b, tab_d, ids, self.rope_cos, self.rope_sin, q_col=q_col, k_col=k_col,
                                  head_dim=d, offset=offset, top=top, shift=shift, dot_precision=self.dot_precision,
                                  check_id_range=pool.device.type != "cpu")  # a host pool was checked above
        return out.values, out.query_index, out.key_index

    def _pool_rows(self, pool: torch.Tensor, head: int):
        """Direct path: [N, 2D] fp32 rows (q of `head` | k of its KV head) per model for the pool,
        projected by the token-table kernel; the last (pool, head) is kept for the next offsets."""
        cached = getattr(self, "_pool_cache", None)
        if (cached is not None and cached[1] == head and cached[0].shape == pool.shape
                and cached[0].device == pool.device and torch.equal(cached[0], pool)):
            return cached[2]
        cfg, token_table = self.cfg, self._mods[0]
        d, g = cfg.head_dim, head // cfg.group
        cols = torch.cat((torch.arange(head * d, (head + 1) * d),
                          torch.arange((cfg.num_heads + g) * d, (cfg.num_heads + g + 1) * d))).to(self.device)
        ids = pool.to(self.device, torch.int64)
        rows = tuple(token_table.token_table(embed, norm, w[cols].contiguous(), b[cols].contiguous(), cfg.rms_norm_eps,
                                             ids=ids, check_id_range=pool.device.type != "cpu")
                     for embed, norm, w, b in self.weights)
        self._pool_cache = (pool.clone(), head, rows)
        return rows

    def _has_baseline(self, baseline: torch.Tensor) -> bool:
        """Whether the baseline is non-zero; read once per baseline tensor (the Scorer reuses one)."""
        seen = self._baseline_seen
        if seen is None or seen[0] is not baseline:
            self._baseline_seen = seen = (baseline, bool(torch.count_nonzero(baseline)))
        return seen[1]


def _device_weights(pair: ModelPair, device: torch.device):
    """(embed, norm, cat(Wq, Wk), cat(bq, bk) fp32) per model on the device, checkpoint dtype kept."""
    out = []
    for w in (pair.base, pair.dormant):
        out.append((w.embed.to(device).contiguous(), w.norm.to(device).contiguous(),
                    torch.cat((w.wq, w.wk)).to(device).contiguous(),
                    torch.cat((w.bq, w.bk)).to(device, torch.float32).contiguous()))
    return tuple(out)


def _views(packed: torch.Tensor, cfg) -> TokenTable:
    """q [V, H, D] / k [V, KV, D] views of both models' halves of the packed table (no copy)."""
    hd, v = cfg.num_heads * cfg.head_dim, packed.shape[0]
    return TokenTable(packed[:, 0, :hd].view(v, cfg.num_heads, cfg.head_dim),
                      packed[:, 0, hd:].view(v, cfg.num_kv_heads, cfg.head_dim),
                      packed[:, 1, :hd].view(v, cfg.num_heads, cfg.head_dim),
                      packed[:, 1, hd:].view(v, cfg.num_kv_heads, cfg.head_dim))
