"""SFTTrainer: next-token cross-entropy on the trained part of each record.

The loss of an accumulation window is the sum of token losses divided by the
number of trained tokens in the whole window, so it does not depend on how the
window is split into micro-batches (transformers' num_items_in_batch)."""

import numpy as np

from calign.data.records import load_records
from calign.data.sft import prepare_sft_data
from calign.data.truncation import Truncation
from calign.model.preference_batch import PackedPreferences
from calign.trainers.base import BaseTrainer
from calign.trainers.config import SFTConfig


class SFTTrainer(BaseTrainer):
    """Supervised fine-tuning configured by SFTConfig (TRL's names)."""

    config_class = SFTConfig
    disables_dropout = False  # TRL's SFTTrainer has no disable_dropout: LoRA's dropout acts

    def _prepare_examples(self, source, name):
        field = self.args.dataset_text_field
        if field != "text":  # a language-modelling record's text under another name
            source = [{("text" if key == field else key): value for key, value in record.items()
                       if key != "text"} if field in record else record
                      for record in load_records(source, name)]
        return prepare_sft_data(source, self.processing_class, Truncation.of(self.args),
                                self.args.completion_only_loss, name)

    def _window_size(self, examples):
        return sum(len(e.completions[0]) for e in examples)

    def _micro_step(self, examples, normaliser, train):
        packed = PackedPreferences(examples)
        hidden = self.model.forward_packed(packed.batch, train=train)
        if train:  # the gradient of each token's log-prob is known: one pass scores and backprops
            grad = np.full(packed.batch.score_rows.size, -1.0 / normaliser)
            d_hidden, token_logps, stats = self.model.score_backward(hidden, packed.batch, grad,
                                                                     return_stats=True)
            self.model.backward_packed(packed.batch, d_hidden)
        else:
            token_logps, stats = self.model.packed_scores(hidden, packed.batch, return_stats=True)
        metrics = {
            "loss": float(-np.mean(token_logps, dtype=np.float64)),
            "entropy": float(stats["entropy"].mean()),
            "mean_token_accuracy": float(stats["is_top1"].mean()),
        }
        return metrics, packed.batch.num_tokens
