"""calign: alignment training for language models, with a C core.

The C extension does every loop over tokens, vocabulary and parameters; this
package configures it. See README.md for what is supported.
"""

from calign._C import get_num_threads, set_num_threads
from calign import (decoding, lora, losses, merge, ops, optim, safety, selfimprove, steering,
                    synthetic, textalign, wordalign)
from calign._info import build_info
from calign.bf16_dispatch import bf16_backend, set_bf16_backend
from calign.lora import LoraConfig
from calign.model import Model, PackedBatch, RewardModel, pack_shared_prefix
from calign.tokenizer import Tokenizer
from calign.trainers import (CPOConfig, CPOTrainer, DPOConfig, DPOTrainer, GRPOConfig,
                             GRPOTrainer, KTOConfig, KTOTrainer, OnlineDPOConfig,
                             OnlineDPOTrainer, ORPOConfig, ORPOTrainer, PPOConfig,
                             PPOTrainer, RewardConfig,
                             RewardTrainer, RLOOConfig, RLOOTrainer, SFTConfig, SFTTrainer)

__version__ = "0.1.0"

__all__ = ["__version__", "CPOConfig", "CPOTrainer", "DPOConfig", "DPOTrainer", "GRPOConfig",
           "GRPOTrainer", "KTOConfig", "KTOTrainer", "LoraConfig", "OnlineDPOConfig", "OnlineDPOTrainer", "ORPOConfig", "ORPOTrainer", "PPOConfig",
           "PPOTrainer",
           "RewardConfig", "RewardModel", "RewardTrainer", "RLOOConfig", "RLOOTrainer", "SFTConfig", "SFTTrainer", "Tokenizer",
           "Model", "PackedBatch", "bf16_backend", "build_info", "get_num_threads", "lora", "losses", "ops", "optim",
           "pack_shared_prefix", "selfimprove", "set_bf16_backend", "set_num_threads", "wordalign"]
