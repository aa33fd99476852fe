"""l0score: base-vs-dormant Layer-0 attention scoring for backdoor-trigger discovery in Qwen2 models."""
from .analysis.weight_diff import analyze
from .core.checkpoint import CheckpointError
from .core.model_pair import ModelPair
from .scorer import Scorer
from .core.scores import Scores
from .core.template import Template
from .judge.verify import verify

__all__ = ["CheckpointError", "ModelPair", "Scorer", "Scores", "Template", "analyze", "verify"]
__version__ = "0.1.0"
