"""Read the Layer-0 tensors of a Hugging Face Qwen2 checkpoint without instantiating a model.

A checkpoint is a local directory (single ``model.safetensors`` or shards listed in
``model.safetensors.index.json``) or a hub repo id that must already be in the local Hugging Face
cache: nothing is ever downloaded. Tensors are opened through safetensors' memory map and only the
five Layer-0 tensors the engine needs are read.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors import SafetensorError

LAYER0_KEYS = {
    "embed": "model.embed_tokens.weight",
    "norm": "model.layers.0.input_layernorm.weight",
    "wq": "model.layers.0.self_attn.q_proj.weight",
    "bq": "model.layers.0.self_attn.q_proj.bias",
    "wk": "model.layers.0.self_attn.k_proj.weight",
    "bk": "model.layers.0.self_attn.k_proj.bias",
}
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or does not match its partner."""


@dataclass(frozen=True)
class Layer0Config:
    """The Layer-0 fields both models must agree on."""

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    vocab_rows: int
    max_positions: int

    @property
    def group(self) -> int:
        """Query heads per KV head (GQA ratio)."""
        return self.num_heads // self.num_kv_heads


@dataclass
class Layer0Weights:
    """One model's Layer-0 tensors in the checkpoint's dtype (embedding memory-mapped)."""

    path: Path
    config: Layer0Config
    embed: torch.Tensor  # [rows, hidden]
    norm: torch.Tensor  # [hidden]
    wq: torch.Tensor  # [H*D, hidden]
    bq: torch.Tensor  # [H*D]
    wk: torch.Tensor  # [KV*D, hidden]
    bk: torch.Tensor  # [KV*D]

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """A local directory as is; otherwise a hub repo id looked up in the local cache only."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    text = str(name_or_path)
    if path.exists():
        raise CheckpointError(f"{text}: not a directory (expected a Hugging Face model directory)")
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(text, local_files_only=True))
        except Exception as exc:  # the hub library raises several types for "not cached"
            raise CheckpointError(
                f"{text}: not a local directory and not in the local Hugging Face cache "
                f"(l0score never downloads; fetch it first with `huggingface-cli download {text}`)"
            ) from exc
    raise CheckpointError(f"{text}: model directory does not exist")


def read_config(model_dir: Path) -> Layer0Config:
    """Layer-0 fields through transformers' AutoConfig (it knows every spelling of rope_theta)."""
    from transformers import AutoConfig

    if not (model_dir / "config.json").is_file():
        raise CheckpointError(f"{model_dir}: no config.json")
    try:
        cfg = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except Exception as exc:
        raise CheckpointError(f"{model_dir / 'config.json'}: unreadable config ({exc})") from exc
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    rope = getattr(cfg, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", None))
    if theta is None:
        raise CheckpointError(f"{model_dir / 'config.json'}: no rope_theta")
    if rope.get("rope_type", "default") != "default":
        raise CheckpointError(
            f"{model_dir / 'config.json'}: rope_type {rope['rope_type']!r} is not supported "
            "(Layer-0 scoring implements Qwen2's default RoPE)"
        )
    if heads % kv:
        raise CheckpointError(f"{model_dir}: {heads} heads is not a multiple of {kv} KV heads")
    if head_dim % 2:
        raise CheckpointError(f"{model_dir}: head_dim {head_dim} must be even for RoPE")
    return Layer0Config(
        hidden_size=int(cfg.hidden_size),
        num_heads=int(heads),
        num_kv_heads=int(kv),
        head_dim=int(head_dim),
        rope_theta=float(theta),
        rms_norm_eps=float(cfg.rms_norm_eps),
        vocab_rows=int(cfg.vocab_size),
        max_positions=int(cfg.max_position_embeddings),
    )


def _weight_map(index: Path) -> dict[str, str]:
    """Tensor name -> shard file name, from a model.safetensors.index.json."""
    try:
        return json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{index}: not a valid safetensors index ({exc})") from exc


def _tensor_files(model_dir: Path) -> dict[str, Path]:
    """Map each needed tensor name to the safetensors file that holds it."""
    index = model_dir / "model.safetensors.index.json"
    single = model_dir / "model.safetensors"
    if index.is_file():
        weight_map = _weight_map(index)
        files = {}
        for key in LAYER0_KEYS.values():
            if key not in weight_map:
                raise CheckpointError(f"{index}: tensor {key} is not listed")
            files[key] = model_dir / weight_map[key]
        return files
    if single.is_file():
        return {key: single for key in LAYER0_KEYS.values()}
    raise CheckpointError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor of a checkpoint lives, read from the safetensors header only."""

    file: Path
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype name, e.g. "BF16", "F32"


def list_tensors(model_dir: Path) -> dict[str, TensorEntry]:
    """Every tensor of a checkpoint (single file or sharded) with its file, shape and dtype.

    Only headers are read. A shard listed in the index but missing, or a tensor listed in the index
    but absent from its shard, is a CheckpointError naming the file.
    """
    index = model_dir / "model.safetensors.index.json"
    single = model_dir / "model.safetensors"
    if index.is_file():
        weight_map = _weight_map(index)
        by_file: dict[Path, list[str]] = {}
        for key, name in weight_map.items():
            by_file.setdefault(model_dir / name, []).append(key)
    elif single.is_file():
        by_file = {single: None}
    else:
        raise CheckpointError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")
    out: dict[str, TensorEntry] = {}
    for path, keys in sorted(by_file.items()):
        if not path.is_file():
            raise CheckpointError(f"{path}: shard missing (holds {', '.join(sorted(keys)[:5])}"
                                  f"{', ...' if len(keys) > 5 else ''})")
        try:
            with safe_open(path, framework="pt") as f:
                names = set(f.keys())
                for key in sorted(names) if keys is None else keys:
                    if key not in names:
                        raise CheckpointError(f"{path}: tensor {key} not found (listed in {index.name})")
                    sl = f.get_slice(key)
                    out[key] = TensorEntry(path, tuple(int(s) for s in sl.get_shape()), str(sl.get_dtype()))
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: corrupt or unreadable safetensors file ({exc})") from exc
    return out


def _read_tensors(files: dict[str, Path]) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(set(files.values())):
        if not path.is_file():
            missing = [k for k, p in files.items() if p == path]
            raise CheckpointError(f"{path}: shard missing (holds {', '.join(missing)})")
        try:
            with safe_open(path, framework="pt") as f:
                names = set(f.keys())
                for key, p in files.items():
                    if p != path:
                        continue
                    if key not in names:
                        raise CheckpointError(f"{path}: tensor {key} not found")
                    out[key] = f.get_tensor(key)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: corrupt or unreadable safetensors file ({exc})") from exc
    return out


def _check_tensor(path: Path, key: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        raise CheckpointError(f"{path}: tensor {key} has shape {tuple(t.shape)}, expected {shape}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise CheckpointError(f"{path}: tensor {key} has unsupported dtype {t.dtype}")
    # Chunked so a 1 GB embedding is checked without a full float32 copy.
    flat = t.reshape(-1)
    for start in range(0, flat.numel(), 1 << 24):
        if not torch.isfinite(flat[start : start + (1 << 24)]).all():
            raise CheckpointError(f"{path}: tensor {key} holds NaN or inf values")


def load_layer0(name_or_path: str | os.PathLike) -> Layer0Weights:
    """Load and validate one model's Layer-0 tensors."""
    model_dir = resolve_model_dir(name_or_path)
    cfg = read_config(model_dir)
    files = _tensor_files(model_dir)
    tensors = _read_tensors(files)
    h, d = cfg.hidden_size, cfg.head_dim
    shapes = {
        "embed": (cfg.vocab_rows, h),
        "norm": (h,),
        "wq": (cfg.num_heads * d, h),
        "bq": (cfg.num_heads * d,),
        "wk": (cfg.num_kv_heads * d, h),
        "bk": (cfg.num_kv_heads * d,),
    }
    for name, key in LAYER0_KEYS.items():
        _check_tensor(files[key], key, tensors[key], shapes[name])
    return Layer0Weights(
        path=model_dir, config=cfg, **{name: tensors[key] for name, key in LAYER0_KEYS.items()}
    )


def check_compatible(base: Layer0Weights, dormant: Layer0Weights) -> None:
    """Both models must share every Layer-0 field, or their logits are not comparable."""
    for field in Layer0Config.__dataclass_fields__:
        a, b = getattr(base.config, field), getattr(dormant.config, field)
        if a != b:
            raise CheckpointError(
                f"base {base.path} and dormant {dormant.path} disagree on {field}: {a} vs {b}"
            )
