"""Reference-free pairwise trainers with an NLL term on the chosen response:
ORPO (Hong et al. 2024) and CPO / SimPO / AlphaPO (Xu et al. 2024; Meng et
al. 2024), as TRL 1.16's ORPOTrainer and CPOTrainer compute them.

    loss = preference term (calign.losses) + nll_weight * NLL(chosen)

where the NLL is the mean token cross-entropy of the micro-batch's chosen
sequences (ORPO: prompt and response tokens; CPO: response tokens only).
"""

import numpy as np

from calign import losses
from calign.data.preference import prepare_preference_data
from calign.data.truncation import Truncation
from calign.model.preference_batch import PackedPreferences
from calign.trainers.base import BaseTrainer
from calign.trainers.config import CPOConfig, ORPOConfig


class PairNLLTrainer(BaseTrainer):
    """Shared micro-step; subclasses define the preference term."""

    nll_includes_prompt = False
    average_logps = False

    def _prepare_examples(self, source, name):
        return prepare_preference_data(source, self.processing_class, Truncation.of(self.args),
                                       name)

    def _nll_weight(self):
        raise NotImplementedError

    def _preference(self, chosen, rejected):
        """(losses, chosen_rewards, rejected_rewards, grad_chosen, grad_rejected, extra metrics)"""
        raise NotImplementedError

    def _micro_step(self, examples, normaliser, train):
        packed = PackedPreferences(examples, score_prompt=self.nll_includes_prompt)
        model = self.model
        hidden = model.forward_packed(packed.batch, train=train)
        token_logps, stats = model.packed_scores(hidden, packed.batch, return_stats=True)
        sums = packed.sequence_sums(token_logps)
        lengths = packed.lengths.reshape(-1, 2)
        logps = sums / lengths if self.average_logps else sums
        out = self._preference(logps[:, 0], logps[:, 1])
        per_example, chosen_rewards, rejected_rewards, grad_c, grad_r, extra = out
        # NLL over the chosen tokens of this micro-batch (and prompt tokens for ORPO)
        n_completion = packed.completion_tokens
        is_chosen = np.repeat(np.tile([True, False], len(examples)), packed.lengths)
        nll_tokens = np.concatenate([is_chosen, np.ones(token_logps.size - n_completion, bool)])
        n_nll = int(nll_tokens.sum())
        nll = float(-token_logps[nll_tokens].sum(dtype=np.float64) / n_nll)
        share = len(examples) / normaliser  # this micro-batch's share of the window
        if train:
            grad_seq = np.stack([grad_c, grad_r], axis=1)
            if self.average_logps:
                grad_seq = grad_seq / lengths
            grad = np.zeros(token_logps.size)
            grad[:n_completion] = packed.per_token(grad_seq / normaliser)
            grad[nll_tokens] += -self._nll_weight() * share / n_nll
            d_hidden, _ = model.score_backward(hidden, packed.batch, grad)
            model.backward_packed(packed.batch, d_hidden)
        metrics = {
            "loss": float(per_example.mean() + self._nll_weight() * nll),
            "rewards/chosen": float(chosen_rewards.mean()),
            "rewards/rejected": float(rejected_rewards.mean()),
            "rewards/accuracies": float((chosen_rewards > rejected_rewards).mean()),
            "rewards/margins": float((chosen_rewards - rejected_rewards).mean()),
            "logps/chosen": float(logps[:, 0].mean()),
            "logps/rejected": float(logps[:, 1].mean()),
            "logits/chosen": float(stats["mean_logit"][:n_completion][is_chosen].mean()),
            "logits/rejected": float(stats["mean_logit"][:n_completion][~is_chosen].mean()),
            "nll_loss": nll,
        }
        metrics.update(extra)
        return metrics, packed.batch.num_tokens


class ORPOTrainer(PairNLLTrainer):
    """ORPO, configured by ORPOConfig. loss = NLL(prompt + chosen) - beta mean
    log sigmoid(log odds ratio of the average response log-probs)."""

    config_class = ORPOConfig
    nll_includes_prompt = True
    average_logps = True

    def _nll_weight(self):
        return 1.0

    def _preference(self, chosen, rejected):
        out = losses.orpo_loss(chosen, rejected, beta=self.args.beta, return_grad=True)
        ratio = -out.losses / self.args.beta  # log sigmoid(log odds)
        extra = {"log_odds_ratio": float(ratio.mean()), "log_odds_chosen": float(out.log_odds.mean())}
        return (out.losses, out.chosen_rewards, out.rejected_rewards, out.grad_chosen,
                out.grad_rejected, extra)


class CPOTrainer(PairNLLTrainer):
    """CPO, SimPO (loss_type="simpo", cpo_alpha=0 for pure SimPO) and AlphaPO,
    configured by CPOConfig."""

    config_class = CPOConfig

    @property
    def average_logps(self):
        return self.args.loss_type in ("ipo", "simpo")

    def _nll_weight(self):
        return self.args.cpo_alpha

    def _preference(self, chosen, rejected):
        a = self.args
        out = losses.cpo_loss(chosen, rejected, beta=a.beta, loss_type=a.loss_type,
                              label_smoothing=a.label_smoothing, simpo_gamma=a.simpo_gamma,
                              alpha=a.alpha, return_grad=True)
        return (out.losses, out.chosen_rewards, out.rejected_rewards, out.grad_chosen,
                out.grad_rejected, {})
