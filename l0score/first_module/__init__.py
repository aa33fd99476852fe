"""The first changed module proposes (docs/architecture.md#beyond-layer-0): when a fine-tune leaves every layer before layer L
bit-identical, both models share the hidden states entering layer L exactly, so the difference of
layer L's changed module (attention or MLP) is an exact, cheap function of those shared states.

location   where the fine-tune starts: (layer, module), checked against the two models' weights
segments   runs of consecutive decoder layers of one model from hidden states, with KV caches
trunk      the shared layers 0..L-1 run once per batch, the prompt prefix's states cached
attention  base-vs-dormant dS of layer L's attention on the trunk's states (the Layer-0 math)
mlp        the relative difference of layer L's two MLP outputs on the shared states
divergence both models k more layers on: 1 - cos of hidden states, KL of the final logits
scorer     `FirstModuleScorer`: the search interface of the Layer-0 and full-model scorers
sweep      every vocabulary token at the candidate slot, ranked (batched, resumable)
partners   every vocabulary token beside one anchor token, ranked by the divergence at the later row
attention_mass  the attention the dormant adds from one token to another, head by head (eager attention)
"""
from .location import MODULES, Location
from .scorer import FirstModuleOptions, FirstModuleScorer, FirstScores

__all__ = ["MODULES", "Location", "FirstModuleOptions", "FirstModuleScorer", "FirstScores"]
