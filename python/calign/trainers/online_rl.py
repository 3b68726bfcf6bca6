"""What GRPOTrainer and RLOOTrainer share: TRL 1.16's generation scheme
(sample a generation batch, score it with the reward functions, train on it
in slices, num_iterations times), the reference model when beta != 0, the
packed forward of a slice, and TRL's metrics.

A micro-step is per_device_train_batch_size rows of a generation batch.
With R MPI ranks (R = 1 without MPI) and A = gradient_accumulation_steps,
optimizer step s takes micro-steps s * A * R + j, j < A * R, and rank r runs
those with j = r mod R. A generation batch (generation_batch_size rows, TRL's
per_device x R x steps_per_generation) is split into slices of
per_device_train_batch_size rows; in an epoch, micro-step p belongs to round
p // (num_iterations * slices) and uses slice p % slices of that round's
batch. A round samples generation_batch_size / num_generations prompts of the
epoch's (seeded) order, whole rounds only, as TRL's RepeatSampler. Its
sampling, rewards and reference log-probs are shared out: rank r does its
contiguous block of the prompts, and the ranks gather the whole batch, so R
ranks with accumulation A train as one process with R x A (and
steps_per_generation R times as many)."""

import math

import numpy as np

from calign import checks, distributed
from calign.data.prompts import check_prompts_fit, prepare_prompts
from calign.model import generation
from calign.trainers import rollouts
from calign.trainers.base import BaseTrainer
from calign.trainers.reference_sync import SyncedReference
from calign.trainers.rewards import RewardFunctions


class OnlineRLTrainer(SyncedReference, BaseTrainer):
    """Subclasses set config_class and give _advantages and _policy_loss."""

    def __init__(self, model, reward_funcs=None, args=None, train_dataset=None,
                 eval_dataset=None, processing_class=None, reward_processing_classes=None,
                 peft_config=None):
        super().__init__(model, args=args, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class,
                         peft_config=peft_config)
        a = self.args
        self.reward_functions = RewardFunctions(reward_funcs, a.reward_weights,
                                                reward_processing_classes, self.processing_class)
        for func in self.reward_functions.funcs:
            self._in_precision(func)
        self.eos_ids = self._eos_ids()
        self.ref_model = None
        if a.beta != 0.0:
            checks.require(not (a.sync_ref_model and self.model.adapters is not None),
                           "sync_ref_model", a.sync_ref_model, "False for a LoRA run (its "
                           "reference is the base model)")
            self.ref_model = self._default_reference()
        self.prompts_per_round = a.generation_batch_size // a.num_generations
        # the config derived steps_per_generation for the ranks a launcher announced;
        # the losses' normalisers need it to be this world's
        per_step = a.per_device_train_batch_size * self.world.size
        checks.require(a.generation_batch_size == per_step * a.steps_per_generation,
                       "generation_batch_size", a.generation_batch_size,
                       f"per_device_train_batch_size x ranks x steps_per_generation ({per_step} "
                       f"x {a.steps_per_generation}): the config was made for another number of "
                       f"ranks than this run's {self.world.size}")
        self.slices_per_round = a.generation_batch_size // a.per_device_train_batch_size
        if len(self.train_examples) < self.prompts_per_round:
            raise ValueError(f"train_dataset has {len(self.train_examples)} prompts, fewer than "
                             f"a generation batch needs (generation_batch_size "
                             f"{a.generation_batch_size} / num_generations {a.num_generations} "
                             f"= {self.prompts_per_round})")
        self._round_key = None
        self._round = None        # the Rollout being trained on
        self._slices = None       # its rows, split into slices_per_round micro-batches
        self.last_rollout = None  # the latest generation batch, for inspection

    @property
    def disables_dropout(self):
        return self.args.disable_dropout

    # ---- the data ------------------------------------------------------------------

    def _prepare_examples(self, source, name):
        a = self.args
        room = None if a.max_length is None else a.max_length - a.max_completion_length
        return prepare_prompts(source, self.processing_class, name=name,
                               chat_template_kwargs=a.chat_template_kwargs, max_prompt_tokens=room)

    def _check_fits(self, examples, name):
        check_prompts_fit(self.model, examples, name, self.args.max_completion_length,
                          "max_completion_length")

    def _eos_ids(self):
        """TRL's stop tokens: the tokenizer's EOS, then the generation config's."""
        ids = generation.eos_token_ids("generation_config.json's eos_token_id",
                                       (self.model.generation_config or {}).get("eos_token_id"))
        eos = self.processing_class.eos_token_id
        if eos is not None and eos not in ids:
            ids = [eos] + ids
        return ids

    # ---- the micro-step scheme -------------------------------------------------------

    def _micro_steps_per_round(self):
        return self.args.num_iterations * self.slices_per_round

    def _micro_batches_per_epoch(self):
        rounds = len(self.train_examples) // self.prompts_per_round
        return rounds * self._micro_steps_per_round()

    def _window(self, step):
        n = self._micro_batches_per_window()
        return [[step * n + j] for j in range(n)]

    def _accumulation(self, train):
        """The micro-batches a loss is divided over: those of an optimizer
        step on all ranks (TRL's gradient_accumulation_steps, times the
        ranks whose gradients are summed), 1 in evaluation."""
        return self._micro_batches_per_window() if train else 1

    def _window_size(self, examples):
        return 1  # the losses normalise themselves, as TRL's

    # ---- generation batches ----------------------------------------------------------

    def _train_round(self, micro_step):
        """(rollout, its rows for this micro-step, metrics to log once, tokens)."""
        a = self.args
        epoch, position = divmod(micro_step, self._micro_batches_per_epoch())
        round_index = position // self._micro_steps_per_round()
        fresh, tokens = {}, 0
        if self._round_key != (epoch, round_index):
            n = len(self.train_examples)
            order = (np.random.default_rng([a.seed, epoch]).permutation(n)
                     if a.shuffle_dataset else np.arange(n))
            start = round_index * self.prompts_per_round
            chosen = [self.train_examples[i] for i in order[start:start + self.prompts_per_round]]
            self._round, fresh, tokens = self._rollout(
                chosen, a.num_generations, rollouts.round_seed(a.seed, epoch, round_index),
                self.world)
            # TRL shuffles the generation batch before splitting it into micro-batches
            rows = np.random.default_rng([a.seed, epoch, round_index]).permutation(
                len(self._round.completion_ids))
            self._slices = np.array_split(rows, self.slices_per_round)
            self._round_key = (epoch, round_index)
        rows = self._slices[position % self.slices_per_round]
        return self._round, sorted(rows.tolist()), fresh, tokens

    def _rollout(self, examples, G, seed, world):
        """Samples, scores and computes the advantages of a generation batch,
        each rank of `world` its block of the prompts; returns (the whole
        rollout, metrics of it, the tokens this rank sampled)."""
        a = self.args
        block = world.block(len(examples))
        rollout = rollouts.sample(self.model, examples[block.start:block.stop], G, a,
                                  self.eos_ids, seed, first_prompt_index=block.start)
        rollout.completions = rollouts.decode_completions(rollout, self.processing_class)
        if self.model.bf16_products:  # the losses' old log-probs, from bf16 products
            rollout.sampling_logps = self._logps(self.model, rollout)
        logged = {}

        def log_metric(name, value):
            logged.setdefault(name, []).append(float(value))

        def log_extra(column, values):
            rollout.extra_logs.setdefault(column, []).extend(values)

        rollout.rewards = self.reward_functions(
            [e.prompt for e in rollout.examples], rollout.completions, rollout.completion_ids,
            rollouts.reward_columns(rollout.examples), trainer_state=self.state,
            log_extra=log_extra, log_metric=log_metric) if rollout.examples else \
            np.zeros((0, len(self.reward_functions)), np.float32)
        if self.ref_model is not None:
            rollout.ref_logps = self._logps(self.ref_model, rollout)
        tokens = sum(len(e.prompt_ids) for e in rollout.examples) + \
            sum(len(c) for c in rollout.completion_ids)
        rollout = rollouts.gathered(world, rollout, examples, G)
        logged = rollouts.merged_lists(world.allgather(logged))
        rollout.trained = ~rollout.truncated if a.mask_truncated_completions else \
            np.ones(len(rollout.truncated), bool)
        rollout.advantages, std_rewards, metrics = self._advantages(rollout, G)
        metrics.update(rollouts.completion_metrics(rollout))
        metrics.update(rollouts.reward_metrics(rollout, self.reward_functions.names,
                                               self.reward_functions.weights, std_rewards))
        metrics.update({k: float(np.mean(v)) for k, v in logged.items()})
        # TRL averages each metric over its values that are not NaN (a batch no function
        # scored, the std of one value): a NaN is left out, not logged
        metrics = {k: v for k, v in metrics.items() if not math.isnan(v)}
        self.last_rollout = rollout
        return rollout, metrics, tokens

    def _logps(self, model, rollout):
        """[N] float32 arrays: each completion's token log-probs under `model`
        (no activations kept), per_device_train_batch_size completions a pass."""
        return rollouts.token_logps(model, rollout, self.args.per_device_train_batch_size,
                                    self.args.temperature)

    # ---- one micro-batch -----------------------------------------------------------

    def _micro_step(self, batch, normaliser, train):
        if train:
            rollout, rows, metrics, tokens = self._train_round(batch[0])
        else:  # an evaluation batch: its prompts, sampled afresh
            a = self.args
            seed = rollouts.round_seed(a.seed, 2**32, self.state.global_step, batch[0].index)
            # the ranks evaluate batches of their own (BaseTrainer.evaluate): no sharing
            rollout, metrics, _ = self._rollout(batch, a.eval_generations, seed,
                                                distributed.World())
            rows, tokens = list(range(len(rollout.completion_ids))), 0
        metrics.update(self._train_rows(rollout, rows, train))
        return metrics, tokens

    def _train_rows(self, rollout, rows, train):
        """Forward of the rows that count, the loss on all rows, and with train
        its backward; returns the micro-batch's metrics."""
        a = self.args
        index_of = {r: i for i, r in enumerate(rows)}
        width = max(len(rollout.completion_ids[r]) for r in rows)
        trained = [r for r in rows if rollout.trained[r]]
        logps = np.zeros((len(rows), width), np.float32)
        entropies = np.zeros((len(rows), width), np.float32)
        mask = rollouts.padded([np.full(len(rollout.completion_ids[r]), rollout.trained[r],
                                        np.float32) for r in rows], width)
        packed = hidden = None
        if trained:
            packed = rollouts.PackedRows(rollout, trained)
            hidden = self.model.forward_packed(packed.batch, train=train)
            scores, stats = self.model.packed_scores(hidden, packed.batch, a.temperature,
                                                     return_stats=True)
            for r, values in packed.per_row(scores).items():
                logps[index_of[r], :len(values)] = values
            for r, values in packed.per_row(stats["entropy"]).items():
                entropies[index_of[r], :len(values)] = values
        result, metrics = self._policy_loss(rollout, rows, logps, entropies, mask, train)
        if train and trained:
            grad = packed.flatten(result.grad_logps, index_of).astype(np.float64)
            d_hidden, _ = self.model.score_backward(hidden, packed.batch, grad, a.temperature)
            self.model.backward_packed(packed.batch, d_hidden)
        metrics["entropy"] = float((entropies * mask).sum() / max(float(mask.sum()), 1.0))
        return metrics

    def _advantages(self, rollout, G):
        """(advantages [N], the std TRL tests for zero per row, metrics)."""
        raise NotImplementedError

    def _policy_loss(self, rollout, rows, logps, entropies, mask, train):
        """(the loss output with grad_logps [B, T], metrics) of rows."""
        raise NotImplementedError

    # ---- evaluation ------------------------------------------------------------------

    def _eval_batch_size(self):
        """TRL's evaluation: per_device_eval_batch_size / num_generations_eval
        prompts a batch, sampled afresh, scored and their loss computed."""
        return max(1, self.args.per_device_eval_batch_size // self.args.eval_generations)
