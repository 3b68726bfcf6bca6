"""Dataset records (TRL's formats) -> token ids ready to pack."""

from calign.data.preference import PreferenceExample, prepare_preference_data
from calign.data.records import load_records
from calign.data.truncation import Truncation

__all__ = ["PreferenceExample", "Truncation", "load_records", "prepare_preference_data"]
