"""Trainers configured like TRL's, running on the C engine."""

from calign.trainers.config import (CPOConfig, DPOConfig, KTOConfig, ORPOConfig, RewardConfig,
                                    SFTConfig, TrainingConfig)
from calign.trainers.dpo import DPOTrainer
from calign.trainers.sft import SFTTrainer

__all__ = ["CPOConfig", "DPOConfig", "DPOTrainer", "KTOConfig", "ORPOConfig", "RewardConfig",
           "SFTConfig", "SFTTrainer", "TrainingConfig"]
