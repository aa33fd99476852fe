"""Search drivers: exhaustive pair scan, beam, MCTS and coordinate ascent over token sequences."""
from .beam import beam
from .coord import coord
from .mcts import mcts
from .minimize import minimize
from .objective import Calibration, Objective
from .pairs import pair_scan, seeds_from_pairs
from .pool import build_pool, roundtrips
from .run import RunOptions, SearchRun

__all__ = ["beam", "coord", "mcts", "minimize", "pair_scan", "seeds_from_pairs", "build_pool", "roundtrips",
           "Objective", "Calibration", "RunOptions", "SearchRun"]
