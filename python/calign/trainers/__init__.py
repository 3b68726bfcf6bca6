"""Trainers configured like TRL's, running on the C engine."""

from calign.trainers.config import (CPOConfig, DPOConfig, KTOConfig, OnlineDPOConfig, ORPOConfig,
                                    RewardConfig, SFTConfig, TrainingConfig)
from calign.trainers.dpo import DPOTrainer
from calign.trainers.grpo import GRPOTrainer
from calign.trainers.kto import KTOTrainer
from calign.trainers.online_dpo import OnlineDPOTrainer
from calign.trainers.pair_nll import CPOTrainer, ORPOTrainer
from calign.trainers.ppo import PPOTrainer
from calign.trainers.reward import RewardTrainer
from calign.trainers.rl_config import GRPOConfig, PPOConfig, RLOOConfig
from calign.trainers.rloo import RLOOTrainer
from calign.trainers.sft import SFTTrainer

__all__ = ["CPOConfig", "CPOTrainer", "DPOConfig", "DPOTrainer", "GRPOConfig", "GRPOTrainer",
           "KTOConfig", "KTOTrainer",
           "OnlineDPOConfig", "OnlineDPOTrainer", "ORPOConfig", "ORPOTrainer", "PPOConfig",
           "PPOTrainer", "RewardConfig",
           "RewardTrainer", "RLOOConfig", "RLOOTrainer", "SFTConfig", "SFTTrainer",
           "TrainingConfig"]
