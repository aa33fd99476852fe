"""Launch plumbing shared by the kernel launchers: interpreter detection, configs, argument checks.

Nothing here touches a GPU driver at import time. Whether to autotune is decided on the first launch:
with a CUDA device and no TRITON_INTERPRET, a kernel is wrapped in `triton.autotune` over its H100
config list; otherwise (interpreter, or no driver) it runs with one fixed config, because autotuning
more than one config needs `do_bench` and an active driver (docs/architecture.md#triton-kernels-without-a-gpu).
"""
from __future__ import annotations

import functools

import torch
import triton
from triton.runtime.interpreter import InterpretedFunction

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
TABLE_DTYPES = (torch.float32, torch.bfloat16)


def interpreting(kernel) -> bool:
    """True when `kernel` was decorated under TRITON_INTERPRET=1 (decoration time is what counts)."""
    return isinstance(kernel, InterpretedFunction)


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


class Launcher:
    """A @triton.jit kernel plus how to launch it.

    gpu_configs: `triton.Config`s autotuned over (keyed on `key`) when a GPU driver is active;
    interp_config: the single config used by the interpreter (and when only one config is wanted);
    prune(configs, meta) -> configs: drops GPU configs that spill for the caller's constexprs.
    Meta-parameters named in the configs must not be passed by the caller.
    """

    def __init__(self, kernel, gpu_configs, interp_config, key, prune=None):
        self.kernel, self.gpu_configs, self.interp_config, self.key = kernel, gpu_configs, interp_config, key
        self.prune = prune or (lambda configs, meta: configs)

    def configs_for(self, meta: dict) -> list:
        """The GPU configs allowed for these launch meta-parameters (never empty)."""
        return self.prune(self.gpu_configs, meta) or self.gpu_configs[:1]

    @functools.cached_property
    def _target(self):
        if interpreting(self.kernel) or not torch.cuda.is_available() or len(self.gpu_configs) < 2:
            return None
        early = lambda configs, named_args, **meta: self.prune(configs, {**named_args, **meta}) or configs[:1]
        return triton.autotune(configs=self.gpu_configs, key=self.key,
                               prune_configs_by={"early_config_prune": early})(self.kernel)

    def __call__(self, grid, *args, **kwargs):
        tuned = self._target
        if tuned is not None:
            return tuned[grid](*args, **kwargs)
        if interpreting(self.kernel) or not self.gpu_configs:
            cfg = self.interp_config
        else:
            cfg = self.configs_for(kwargs)[0]
        return self.kernel[grid](*args, **kwargs, **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def check_tensor(name: str, t, ndim: int | None = None, dtypes=None, device=None, inner_contiguous: bool = True):
    """Raise TypeError/ValueError unless t is a tensor of the expected rank, dtype and device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device}")
    if inner_contiguous and t.dim() and t.numel() and t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension")


def check_ids(name: str, ids: torch.Tensor, upper: int) -> None:
    """Range-check integer ids in [0, upper). Reads the values, so on a GPU tensor it synchronises:
    callers that have already validated a host copy pass check_ids=False to the launchers."""
    if ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be int32 or int64, got {ids.dtype}")
    if ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= upper:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} holds id {bad} outside [0, {upper})")
