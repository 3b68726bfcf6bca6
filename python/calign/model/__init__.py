"""The transformer engine's Python surface."""

from calign.model.model import Model
from calign.model.packing import PackedBatch, pack_shared_prefix

__all__ = ["Model", "PackedBatch", "pack_shared_prefix"]
