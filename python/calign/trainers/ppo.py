"""PPOTrainer: RLHF as in InstructGPT (Ouyang et al. 2022, §3.5 and App. C.4),
with TRL's PPOTrainer names (trl.experimental.ppo, v1.9).

An update: sample one completion per prompt from the policy (the sampler's
log-probs are the old policy's), score it with the reward model (or a reward
function with TRL's signature), fold the per-token KL to the reference (the
SFT model) into the reward, estimate advantages with GAE against a value
model (a scalar head on a transformer, initialised from the reward model as
in the paper, or from the policy), then num_ppo_epochs passes of the clipped
policy and value losses over shuffled mini-batches. With ptx_coef, each
micro-batch also adds ptx_coef times the language-modelling loss of
pretraining text (PPO-ptx, eq. 2). Every loss is calign.losses' C function.

Where TRL's and the paper's recipes differ, this follows the paper: the
score is added at the completion's last token (TRL adds it one position
past it), so the value of that position is the completion's own."""

import os
from dataclasses import dataclass

import numpy as np

from calign import checks, distributed, losses
from calign.data.prompts import check_prompts_fit, prepare_prompts
from calign.data.records import load_records, require_field
from calign.data.tokenize import with_eos
from calign.model import RewardModel
from calign.model.loading import load_model
from calign.model.packing import pack_shared_prefix
from calign.trainers import rollouts
from calign.trainers.base import BaseTrainer, accumulate
from calign.trainers.rewards import RewardFunctions
from calign.trainers.rl_config import PPOConfig


@dataclass
class PPORollout:
    """An update's completions and what PPO trains them with, [N, T] each (T
    the longest completion), in the rollout's row order."""
    rollout: rollouts.Rollout
    old_logps: np.ndarray   # the sampling policy's token log-probs
    old_values: np.ndarray  # the value model's, before the update
    advantages: np.ndarray  # GAE, whitened over the completion tokens
    returns: np.ndarray     # GAE's advantages + old_values
    mask: np.ndarray        # 1 on completion tokens


class ValueHead:
    """Per-token values of a RewardModel: its score head applied to the hidden
    state that predicts each completion token (TRL's value model reads the
    same positions)."""

    def __init__(self, model):
        self.model = model

    @property
    def weight(self):
        return self.model.state_dict()["score.weight"][0]

    def values(self, packed, train):
        """(values float32 [M] in score order, the hidden states)."""
        hidden = self.model.forward_packed(packed.batch, train=train)
        return hidden[packed.batch.score_rows] @ self.weight, hidden

    def backward(self, packed, hidden, grad_values):
        """Adds the gradient of sum(grad_values * values) to the value model's."""
        rows = packed.batch.score_rows
        g = np.asarray(grad_values, np.float32)
        d_hidden = np.zeros_like(hidden)
        np.add.at(d_hidden, rows, g[:, None] * self.weight[None, :])
        self.model.grads()["score.weight"][0] += g @ hidden[rows]
        self.model.backward_packed(packed.batch, d_hidden)


class PPOTrainer(BaseTrainer):
    """PPO. train_dataset holds {"prompt": text or messages, ...} records;
    reward_model is a calign.RewardModel, a reward model folder, or a reward
    function with TRL's signature (None: args.reward_model_path); value_model
    is a calign.RewardModel or a folder (None: a copy of the reward model when
    it is a model of the policy's shape, else the policy with a new head);
    ref_model the frozen reference (None: a copy of the policy, or with LoRA
    the base). ptx_dataset: {"text": ...} records of pretraining text, used
    with args.ptx_coef > 0."""

    config_class = PPOConfig

    def __init__(self, model, reward_model=None, args=None, train_dataset=None,
                 eval_dataset=None, processing_class=None, value_model=None, ref_model=None,
                 peft_config=None, ptx_dataset=None):
        super().__init__(model, args=args, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class,
                         peft_config=peft_config)
        a = self.args
        if reward_model is None:
            checks.require(a.reward_model_path is not None, "reward_model", reward_model,
                           "a reward model, a folder or a reward function (or set "
                           "args.reward_model_path)")
            reward_model = a.reward_model_path
        self.reward_functions = RewardFunctions(reward_model, tokenizer=self.processing_class)
        for func in self.reward_functions.funcs:
            self._in_precision(func)
        self.ref_model = (self._default_reference() if ref_model is None
                          else self._load_reference(ref_model))
        self.value = ValueHead(self._in_precision(self._value_model(value_model)))
        self.value_optimizer = self._make_optimizer(self.value.model)
        self.stop_ids = self._stop_ids()
        self.ptx = self._ptx_sequences(ptx_dataset)
        ranks = a.mini_batch_size // (a.per_device_train_batch_size *
                                      a.gradient_accumulation_steps)
        checks.require(ranks == self.world.size, "per_device_train_batch_size",
                       a.per_device_train_batch_size,
                       f"a batch of this run's {self.world.size} ranks: the config's batch sizes "
                       f"count {ranks} (the ranks a launcher announced)")
        if len(self.train_examples) < a.batch_size:
            raise ValueError(f"train_dataset has {len(self.train_examples)} prompts, fewer than "
                             f"an update needs (per_device_train_batch_size * "
                             f"gradient_accumulation_steps * num_mini_batches * ranks = "
                             f"{a.batch_size})")
        self.last_rollout = None

    # ---- the models --------------------------------------------------------------------

    def _value_model(self, value_model):
        if isinstance(value_model, (str, os.PathLike)):
            value_model = RewardModel.from_pretrained(os.fspath(value_model))
        if value_model is None:
            scorer = self.reward_functions.funcs[0]
            if isinstance(scorer, RewardModel):  # InstructGPT: from the reward model
                value_model = RewardModel(scorer.config)
                value_model.params[...] = scorer.params
            else:
                value_model = self._policy_value_model()
        if not isinstance(value_model, RewardModel):
            raise TypeError("value_model must be a calign.RewardModel, a reward model folder "
                            f"or None, not {type(value_model).__name__}")
        if value_model.max_positions < self.model.max_positions or \
                value_model.vocab_size < self.model.vocab_size:
            raise ValueError(f"value_model has {value_model.max_positions} positions and a "
                             f"vocabulary of {value_model.vocab_size}; the policy's prompts and "
                             f"completions need {self.model.max_positions} and "
                             f"{self.model.vocab_size}")
        return value_model

    def _policy_value_model(self):
        """A RewardModel whose backbone is the policy's weights (its head
        initialised as transformers does)."""
        value_model = RewardModel(self.model.config)
        theirs = self.model.state_dict()
        for name, view in value_model.state_dict().items():
            if name == "score.weight":
                view[...] = np.random.default_rng(self.args.seed).normal(
                    0.0, float(self.model.config.get("initializer_range", 0.02)), view.shape)
            elif name in theirs:
                view[...] = theirs[name]
        return value_model

    def _stop_ids(self):
        a = self.args
        if a.stop_token == "eos":
            eos = self.processing_class.eos_token_id if self.processing_class else None
            checks.require(eos is not None, "stop_token", a.stop_token,
                           "None when the tokenizer has no EOS token")
            return [eos]
        return [] if a.stop_token_id is None else [a.stop_token_id]

    # ---- the data ----------------------------------------------------------------------

    def _prepare_examples(self, source, name):
        a = self.args
        room = None if a.max_length is None else a.max_length - a.response_length
        return prepare_prompts(source, self.processing_class, name=name,
                               max_prompt_tokens=room)

    def _check_fits(self, examples, name):
        check_prompts_fit(self.model, examples, name, self.args.response_length,
                          "response_length")

    def _load_reference(self, ref_model):
        reference = self._in_precision(load_model(ref_model, "ref_model"))
        for examples, name in ((self.train_examples, "train_dataset"),
                               (self.eval_examples, "eval_dataset")):
            check_prompts_fit(reference, examples or (), name, self.args.response_length,
                              "response_length", "ref_model")
        return reference

    def _ptx_sequences(self, ptx_dataset):
        """The pretraining texts as token-id lists (the EOS appended, as to SFT's
        text records), or None."""
        a = self.args
        if a.ptx_coef == 0.0:
            checks.require(ptx_dataset is None, "ptx_dataset", "given",
                           "None when args.ptx_coef is 0 (it would not be used)")
            return None
        checks.require(ptx_dataset is not None, "ptx_dataset", None,
                       "pretraining records ({'text': ...}) when args.ptx_coef > 0")
        sequences = []
        for index, record in enumerate(load_records(ptx_dataset, "ptx_dataset")):
            text = require_field(record, "text", index, "ptx_dataset")
            if not isinstance(text, str):
                raise TypeError(f"ptx_dataset record {index}: text must be a string")
            ids = self.processing_class.encode(with_eos(text, self.processing_class))
            ids = ids[:self.model.max_positions]
            if len(ids) < 2:
                raise ValueError(f"ptx_dataset record {index}: fewer than 2 tokens, nothing to "
                                 "predict")
            sequences.append(ids)
        return sequences

    # ---- the schedule: a step is an update --------------------------------------------

    def _windows_per_epoch(self):
        return len(self.train_examples) // self.args.batch_size

    def total_steps(self):
        a = self.args
        if a.max_steps > 0:
            return a.max_steps
        episodes = a.total_episodes or int(a.num_train_epochs * len(self.train_examples))
        return max(1, -(-episodes // a.batch_size))

    def _update_prompts(self, update):
        a = self.args
        epoch, position = divmod(update, self._windows_per_epoch())
        n = len(self.train_examples)
        seed = a.seed if a.data_seed is None else a.data_seed
        order = (np.random.default_rng([seed, epoch]).permutation(n)
                 if a.train_sampling_strategy == "random" else np.arange(n))
        start = position * a.batch_size
        return [self.train_examples[i] for i in order[start:start + a.batch_size]]

    # ---- the rollout -------------------------------------------------------------------

    def _rollout(self, examples, seed, world):
        """Samples, scores and estimates the advantages of an update's
        completions, each rank of `world` its block of the prompts; returns
        (PPORollout of them all, TRL's rollout metrics, the tokens this rank
        sampled)."""
        a = self.args
        block = world.block(len(examples))
        mine, scores, values = self._sampled(examples[block.start:block.stop], seed,
                                             block.start)
        tokens = sum(len(e.prompt_ids) for e in mine.examples) + \
            sum(len(c) for c in mine.completion_ids)
        parts = world.allgather((mine.completion_ids, mine.sampling_logps, mine.completions,
                                 list(scores), mine.ref_logps, values))
        ids, logps, texts, scores, ref, values = (rollouts.join(p) for p in zip(*parts))
        stops = set(self.stop_ids)
        ended = np.array([bool(s) and s[-1] in stops for s in ids])
        rollout = rollouts.Rollout(list(examples), ids, logps, ~ended, completions=texts,
                                   trained=np.ones(len(ids), bool))
        scores = np.asarray(scores, np.float64)
        if a.missing_eos_penalty is not None:
            scores[~ended] -= a.missing_eos_penalty
        width = max(len(s) for s in ids)
        mask = rollouts.padded([np.ones(len(s), np.float32) for s in ids], width)
        old = rollouts.padded(logps, width)
        shaped = losses.shape_rewards(scores, old, rollouts.padded(ref, width), mask,
                                      kl_coef=a.kl_coef, kl_estimator=a.kl_estimator,
                                      whiten_rewards=a.whiten_rewards,
                                      score_position="last_token")
        values = rollouts.padded(values, width)
        advantages, returns = losses.gae(shaped.rewards, values, mask, gamma=a.gamma, lam=a.lam)
        if mask.sum() > 1:  # TRL whitens the advantages over the completion tokens
            advantages = losses.masked_whiten(advantages, mask)
        self.last_rollout = rollout
        metrics = dict(shaped.metrics)
        metrics["val/num_eos_tokens"] = float(ended.sum())
        metrics.update(rollouts.completion_metrics(rollout))
        return PPORollout(rollout, old, values, advantages, returns, mask), metrics, tokens

    def _sampled(self, examples, seed, first_prompt_index):
        """(a Rollout of some prompts, prompt first_prompt_index on of the
        seed's batch, with its reference log-probs; the completions' scores
        [N] float64; the value model's values of each completion token)."""
        a = self.args
        if not examples:
            return rollouts.Rollout([], [], [], np.zeros(0, bool), completions=[],
                                    ref_logps=[]), np.zeros(0), []
        sequences, logps = self.model.generate(
            [e.prompt_ids for e in examples], max_new_tokens=a.response_length, do_sample=True,
            temperature=a.temperature, top_k=0, top_p=1.0, repetition_penalty=1.0,
            eos_token_id=list(self.stop_ids), seed=seed, return_logprobs=True,
            first_prompt_index=first_prompt_index)
        rollout = rollouts.Rollout(list(examples), sequences, logps, np.zeros(0, bool))
        rollout.completions = rollouts.decode_completions(rollout, self.processing_class)
        scores = self._scores(rollout)
        if np.isnan(scores).any():
            raise ValueError("the reward function returned None for a completion: PPO needs "
                             "every completion's score")
        step = a.local_rollout_forward_batch_size
        if self.model.bf16_products:  # the losses' old log-probs, from bf16 products
            rollout.sampling_logps = rollouts.token_logps(self.model, rollout, step,
                                                          a.temperature)
        rollout.ref_logps = rollouts.token_logps(self.ref_model, rollout, step, a.temperature)
        values = rollouts.per_row_scores(
            rollout, step, lambda packed: self.value.values(packed, False)[0])
        return rollout, scores, values

    def _scores(self, rollout):
        """float64 [N]: a reward model scores the prompt + completion token ids as
        sampled, EOS included (TRL's PPO does; the policy's tokenizer is the
        reward model's); a reward function gets TRL's arguments."""
        scorer = self.reward_functions.funcs[0]
        if isinstance(scorer, RewardModel):
            step = self.args.local_rollout_forward_batch_size
            ids, prompts = rollout.completion_ids, [e.prompt_ids for e in rollout.examples]
            return np.concatenate([scorer.score(ids[i:i + step], prompts=prompts[i:i + step])
                                   for i in range(0, len(ids), step)])
        return self.reward_functions(
            [e.prompt for e in rollout.examples], rollout.completions, rollout.completion_ids,
            rollouts.reward_columns(rollout.examples), trainer_state=self.state,
            log_extra=lambda column, values: None,
            log_metric=lambda name, value: None)[:, 0].astype(np.float64)

    # ---- an update ---------------------------------------------------------------------

    def _training_step(self, update, lr, sums, counts):
        a = self.args
        batch, metrics, tokens = self._rollout(self._update_prompts(update),
                                               rollouts.round_seed(a.seed, update), self.world)
        accumulate(sums, counts, metrics)
        self.state.num_tokens += self.world.sum(tokens)
        rng = np.random.default_rng([a.seed, update])
        norms, micro_batches = [], 0
        for _ in range(a.num_ppo_epochs):
            order = rng.permutation(a.batch_size)
            for start in range(0, a.batch_size, a.mini_batch_size):
                rows = order[start:start + a.mini_batch_size]
                norms.append(self._mini_batch(batch, rows, lr, update, micro_batches, sums,
                                              counts))
                micro_batches += -(-len(rows) // a.per_device_train_batch_size)
        return float(np.mean(norms))

    def _mini_batch(self, batch, rows, lr, update, first_micro_batch, sums, counts):
        """An optimizer step on a mini-batch's rows: its micro-batches (numbered
        from first_micro_batch in the update) dealt to the ranks, the two
        models' gradients summed over them."""
        a = self.args
        self.model.zero_grad()
        self.value.model.zero_grad()
        bs = a.per_device_train_batch_size
        micro = [(first_micro_batch + i, sorted(rows[start:start + bs].tolist()))
                 for i, start in enumerate(range(0, len(rows), bs))]
        scale = 1.0 / len(micro)
        for index, micro_rows in self.world.share(micro):
            accumulate(sums, counts, self._micro_batch(batch, micro_rows, update, index, scale))
        self.world.sum_in_place(self.model.train_grads)
        self.world.sum_in_place(self.value.model.train_grads)
        grad_norm = self._clip_gradients(update, [self.model, self.value.model])
        self.optimizer.step(lr=lr)
        self.value_optimizer.step(lr=lr)
        return grad_norm

    def _micro_batch(self, batch, rows, update, index, scale):
        """The PPO losses of some completions (and the pretraining term, the
        update's micro-batch `index`), their gradients times scale (1 / the
        mini-batch's micro-batches) added to the policy's and the value
        model's."""
        a = self.args
        packed = rollouts.PackedRows(batch.rollout, rows)
        index_of = {r: i for i, r in enumerate(rows)}
        hidden = self.model.forward_packed(packed.batch, train=True)
        scores, stats = self.model.packed_scores(hidden, packed.batch, a.temperature,
                                                 return_stats=True)
        values, value_hidden = self.value.values(packed, train=True)
        width = batch.mask.shape[1]
        logps = np.zeros((len(rows), width), np.float32)
        new_values = np.zeros((len(rows), width), np.float32)
        entropy = np.zeros((len(rows), width), np.float32)
        for r, v in packed.per_row(scores).items():
            logps[index_of[r], :len(v)] = v
        for r, v in packed.per_row(values).items():
            new_values[index_of[r], :len(v)] = v
        for r, v in packed.per_row(stats["entropy"]).items():
            entropy[index_of[r], :len(v)] = v
        mask = batch.mask[rows]
        out = losses.ppo_losses(logps, batch.old_logps[rows], new_values,
                                batch.old_values[rows], batch.advantages[rows],
                                batch.returns[rows], mask, cliprange=a.cliprange,
                                cliprange_value=a.cliprange_value, vf_coef=a.vf_coef)
        grad = packed.flatten(out.grad_logps, index_of).astype(np.float64) * scale
        d_hidden, _ = self.model.score_backward(hidden, packed.batch, grad, a.temperature)
        self.model.backward_packed(packed.batch, d_hidden)
        self.value.backward(packed, value_hidden, packed.flatten(out.grad_values, index_of) * scale)
        metrics = dict(out.metrics, loss=out.loss,
                       **{"policy/entropy_avg": float((entropy * mask).sum() / mask.sum())})
        if self.ptx is not None:
            metrics["ptx/loss"] = self._ptx_step(scale, update, index)
        return metrics

    def _ptx_step(self, scale, update, index):
        """InstructGPT's pretraining term: adds ptx_coef * d(mean token NLL) of a
        micro-batch of pretraining sequences (drawn from the seed, the update
        and the micro-batch's index in it) to the policy's gradient; returns
        the NLL."""
        a = self.args
        n = a.ptx_batch_size or a.per_device_train_batch_size
        rng = np.random.default_rng([a.seed, update, index + 1])
        chosen = [self.ptx[i] for i in rng.integers(0, len(self.ptx), n)]
        batch = pack_shared_prefix([(s[:1], [s[1:]]) for s in chosen])
        hidden = self.model.forward_packed(batch, train=True)
        tokens = batch.score_rows.size
        d_hidden, logps = self.model.score_backward(
            hidden, batch, np.full(tokens, -a.ptx_coef * scale / tokens))
        self.model.backward_packed(batch, d_hidden)
        return -float(np.mean(logps, dtype=np.float64))

    def _micro_step(self, examples, normaliser, train):
        """An evaluation batch (training runs whole updates, _training_step):
        its prompts sampled and scored, the rollout metrics; no update."""
        seed = rollouts.round_seed(self.args.seed, 2**32, self.state.global_step,
                                   examples[0].index)
        # the ranks evaluate batches of their own (BaseTrainer.evaluate): no sharing
        _, metrics, _ = self._rollout(examples, seed, distributed.World())
        return metrics, 0

    # ---- checkpoints: the value model and its optimizer ride along ----------------------

    def _save_extra_files(self, folder):
        self.value.model.save_pretrained(os.path.join(folder, "value_model"), dtype="float32")
        self.value_optimizer.save(os.path.join(folder, "value_optimizer.safetensors"))

    def _load_extra_state(self, state, path):
        saved = RewardModel.from_pretrained(os.path.join(path, "value_model"))
        self.value.model.params[...] = saved.params
        self.value_optimizer.load(os.path.join(path, "value_optimizer.safetensors"))

    def save_model(self, path=None):
        """The policy (and tokenizer) in `path`, the value model in path/value_model."""
        path = path or self.args.output_dir
        super().save_model(path)
        self.value.model.save_pretrained(os.path.join(path, "value_model"))
