"""The transformer engine's Python surface."""

from calign.model.model import Model
from calign.model.packing import PackedBatch, pack_shared_prefix
from calign.model.reward_model import RewardModel

__all__ = ["Model", "PackedBatch", "RewardModel", "pack_shared_prefix"]
