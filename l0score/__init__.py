"""l0score: base-vs-dormant Layer-0 attention scoring for backdoor-trigger discovery in Qwen2 models."""
from .checkpoint import CheckpointError
from .model_pair import ModelPair
from .scorer import Scorer
from .scores import Scores
from .template import Template

__all__ = ["CheckpointError", "ModelPair", "Scorer", "Scores", "Template"]
__version__ = "0.1.0"
