"""Dataset records (TRL's formats) -> token ids ready to pack."""

from calign.data.preference import PreferenceExample, prepare_preference_data
from calign.data.records import load_records

__all__ = ["PreferenceExample", "load_records", "prepare_preference_data"]
