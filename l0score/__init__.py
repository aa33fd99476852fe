"""l0score: base-vs-dormant Layer-0 attention scoring for backdoor-trigger discovery in Qwen2 models."""
from .analyze import analyze
from .checkpoint import CheckpointError
from .model_pair import ModelPair
from .scorer import Scorer
from .scores import Scores
from .template import Template
from .verify import verify

__all__ = ["CheckpointError", "ModelPair", "Scorer", "Scores", "Template", "analyze", "verify"]
__version__ = "0.1.0"
