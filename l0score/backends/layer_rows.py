"""Layer-L attention rows of hidden states on the fused kernels (the first-module scorer's backends).

The first-module scorer (first_module/attention.py) has, per batch, the shared trunk's states entering
layer L for every dependent row [B, n, d] (candidate then suffix) and the prefix's rotated keys. Its
"torch" path projects and scores them with reference.score_rows; these classes give the same RowStats
from the Layer-0 kernels, projecting on the fly instead of reading a token table:

* native: the layer's RMSNorm + Q/K projection (one float32 GEMM per model) into a per-batch table
  whose row b * n + t is candidate b's position t, then _native.score_dependent (RoPE + dS
  reduction). Not score_table: it shares the suffix rows between candidates, which only holds at
  layer 0; at layer L a suffix row's q/k depend on the candidate.
* triton: kernels/triton/direct.py with the states in place of the embedding and ids b * n + t, so
  RMSNorm, projection, RoPE and reduction run in one kernel (CUDA, or CPU under TRITON_INTERPRET=1).

The first-module scorer has no content-free baseline (zero): the kernels skip it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.reference import rope_angles
from ..core.types import RowStats

LAYER_BACKENDS = ("torch", "native", "triton")


@dataclass
class LayerWeights:
    """One model's layer-L attention input, float32: RMSNorm weight and eps, cat(Wq, Wk), cat(bq, bk)."""

    norm: torch.Tensor
    eps: float
    w: torch.Tensor
    bias: torch.Tensor


@dataclass
class HeadShape:
    n_heads: int
    n_kv: int
    head_dim: int
    theta: float
    positions: int  # RoPE table length (max_position_embeddings)


def create(backend: str, weights: tuple[LayerWeights, LayerWeights], shape: HeadShape, device):
    """The kernel path for backend "native" or "triton" (None for "torch": the caller's reference math)."""
    if backend not in LAYER_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(LAYER_BACKENDS)}, got {backend!r}")
    if backend == "torch":
        return None
    return (NativeLayerRows if backend == "native" else TritonLayerRows)(weights, shape, torch.device(device))


def native_available() -> bool:
    """Whether the compiled module has the layer-L kernel (score_dependent)."""
    from .native import _native, available

    return available() and hasattr(_native, "score_dependent")


class NativeLayerRows:
    name = "native"

    def __init__(self, weights, shape: HeadShape, device: torch.device):
        from .native import _native  # through backends.native: the one module importing the extension

        if device.type != "cpu":
            raise ValueError(f"layer-L backend 'native' runs on the CPU, not {device}")
        if not native_available():
            raise RuntimeError("l0score._native has no score_dependent: rebuild with `pip install -e .`")
        self._native, self.shape = _native, shape
        self.models = [LayerWeights(w.norm.cpu(), w.eps, w.w.cpu(), w.bias.cpu()) for w in weights]
        cos, sin = rope_angles(torch.arange(shape.positions), shape.head_dim, shape.theta)
        self.cos, self.sin = cos.contiguous().numpy(), sin.contiguous().numpy()

    def prepare(self, keys: tuple[torch.Tensor, torch.Tensor]) -> np.ndarray:
        """The prefix's rotated keys [p, KV, D] per model as the kernel's [2, KV, D, ceil8(p)] tile."""
        p, s = len(keys[0]), self.shape
        tile = torch.zeros(2, s.n_kv, s.head_dim, -(-p // 8) * 8)
        if p:
            tile[..., :p] = torch.stack([k.float().cpu() for k in keys]).permute(0, 2, 3, 1)
        return tile.numpy()

    def project(self, hidden: torch.Tensor) -> tuple[np.ndarray, ...]:
        """(q_base, k_base, q_dorm, k_dorm) [rows, X * D] of the states [rows, d]: RMSNorm and one
        float32 GEMM per model. torch's GEMM, as on the Layer-0 direct path: the native table builder
        accumulates in double and is ~3x slower here (docs/first-module.md)."""
        x = hidden.float()
        ms = x.pow(2).mean(-1, keepdim=True)
        qd = self.shape.n_heads * self.shape.head_dim
        out = []
        for w in self.models:
            qk = torch.addmm(w.bias, w.norm * (x * torch.rsqrt(ms + w.eps)), w.w.T)
            out += [qk[:, :qd].contiguous().numpy(), qk[:, qd:].contiguous().numpy()]
        return tuple(out)

    def score(self, hidden: torch.Tensor, cand_len: int, prefix: np.ndarray, p: int, heads: torch.Tensor,
              region: str, offsets: torch.Tensor) -> RowStats:
        """RowStats of the dependent rows' states [B, n, d] (reference.score_rows semantics)."""
        B, n = hidden.shape[:2]
        tables = self.project(hidden.reshape(B * n, -1).cpu())
        ids = np.arange(B * n, dtype=np.int64).reshape(B, n)
        s = self.shape
        out = self._native.score_dependent(
            *tables, s.n_heads, s.n_kv, s.head_dim, ids, np.full(B, cand_len, np.int64), np.full(B, n, np.int64),
            heads.cpu().numpy(), prefix, p, p, self.cos, self.sin, np.zeros((0, 0), np.float32),
            offsets.cpu().numpy(), region == "all")
        return RowStats(*(torch.from_numpy(t) for t in out))


class TritonLayerRows:
    name = "triton"

    def __init__(self, weights, shape: HeadShape, device: torch.device):
        from .triton import _interpret_env, _kernels

        if device.type == "cpu" and not _interpret_env():
            raise RuntimeError("layer-L backend 'triton' on CPU needs TRITON_INTERPRET=1 set at process start")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"layer-L backend 'triton' runs on CUDA (or CPU interpreted), not {device}")
        self.direct = _kernels()[2]
        self.shape, self.device = shape, device
        self.models = [(w.norm.to(device).contiguous(), w.w.to(device).contiguous(),
                        w.bias.to(device).contiguous(), w.eps) for w in weights]
        cos, sin = rope_angles(torch.arange(shape.positions, device=device), shape.head_dim, shape.theta)
        self.cos, self.sin = cos.contiguous(), sin.contiguous()

    def prepare(self, keys: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(k.to(self.device, torch.float32).contiguous() for k in keys)

    def score(self, hidden: torch.Tensor, cand_len: int, prefix, p: int, heads: torch.Tensor, region: str,
              offsets: torch.Tensor) -> RowStats:
        B, n = hidden.shape[:2]
        s, dev = self.shape, self.device
        states = hidden.reshape(B * n, -1).to(dev, torch.float32).contiguous()
        (norm_b, w_b, b_b, eps), (norm_d, w_d, b_d, _) = self.models
        ids = torch.arange(B * n, dtype=torch.int32, device=dev).view(B, n)
        out = self.direct.score_direct(
            (states, norm_b, w_b, b_b), (states, norm_d, w_d, b_d), eps, ids,
            torch.full((B,), cand_len, dtype=torch.int32, device=dev), torch.full((B,), n, dtype=torch.int32, device=dev),
            prefix, heads.to(dev, torch.int32), self.cos, self.sin, None, offsets.to(dev), n_heads=s.n_heads,
            n_kv_heads=s.n_kv, head_dim=s.head_dim, region=region, check_id_range=False)
        band = out.band.amax(1) if out.band.shape[2] else torch.zeros(B, 0, device=dev)
        return RowStats(out.head_max, out.head_pos, out.head_kl, band)
