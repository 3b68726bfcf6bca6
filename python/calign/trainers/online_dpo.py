"""OnlineDPOTrainer (Guo et al. 2024, TRL's OnlineDPOTrainer): every step
samples two completions per prompt from the current policy, ranks them with a
reward model or a scoring function, and takes a DPO step on the pair."""

import numpy as np

from calign import checks
from calign.data.preference import PreferenceExample
from calign.data.records import load_records, require_field
from calign.data.tokenize import token_ids
from calign.model import RewardModel
from calign.trainers.config import OnlineDPOConfig
from calign.trainers.dpo import DPOTrainer
from calign.trainers.rollouts import round_seed


def _reward_name(reward_model):
    if isinstance(reward_model, RewardModel):
        return "the reward model"
    name = getattr(reward_model, "__qualname__", None) or type(reward_model).__name__
    return f"the reward function {name}"


class OnlineDPOTrainer(DPOTrainer):
    """Online DPO. train_dataset holds prompts ({"prompt": text} records, or
    {"prompt_input_ids": [...]}); reward_model is a calign.RewardModel or a
    callable(prompt, completion) -> float, or None to load args.reward_model_path.
    The pair of a step: the higher-scored sample is chosen (the first on a tie,
    as TRL). The samples are drawn with the config's temperature, top_k, top_p
    and repetition_penalty (TRL's defaults: no filter), not the checkpoint's
    generation_config. A micro-batch's samples are seeded by (seed, step, its
    first prompt's index), so they are the same on any number of MPI ranks.

    Prompts keep their end when they are longer than max_prompt_length, or than
    max_length less max_new_tokens (the room a completion needs), as TRL cuts
    them. Each prompt plus max_new_tokens must then fit the positions of the
    model (and of a separate ref_model), which is checked for every record when
    the trainer is built."""

    config_class = OnlineDPOConfig

    def __init__(self, model, reward_model=None, ref_model=None, args=None, train_dataset=None,
                 eval_dataset=None, processing_class=None, peft_config=None):
        if reward_model is None and args is not None and args.reward_model_path is not None:
            reward_model = RewardModel.from_pretrained(args.reward_model_path)
        elif reward_model is not None and args is not None:
            checks.require(args.reward_model_path is None, "reward_model_path",
                           args.reward_model_path, "None when a reward_model is given")
        if not isinstance(reward_model, RewardModel) and not callable(reward_model):
            raise TypeError("reward_model must be a calign.RewardModel or a "
                            "callable(prompt, completion) (or give args.reward_model_path)")
        self.reward_model = reward_model
        super().__init__(model, ref_model=ref_model, args=args, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class,
                         peft_config=peft_config)
        self._in_precision(self.reward_model)
        self.last_pairs = []

    def _prepare_examples(self, source, name):
        a = self.args
        positions = self.model.max_positions
        examples = []
        for index, record in enumerate(load_records(source, name)):
            if "prompt_input_ids" in record:
                prompt = token_ids("prompt_input_ids", record["prompt_input_ids"], index, name)
            else:
                text = require_field(record, "prompt", index, name)
                if not isinstance(text, str):
                    raise TypeError(f"{name} record {index}: prompt must be a string (or give "
                                    f"prompt_input_ids), got {type(text).__name__}")
                if self.processing_class is None:
                    raise ValueError(f"{name} record {index} holds text: pass processing_class")
                prompt = self.processing_class.encode(text)
            if not prompt:
                raise ValueError(f"{name} record {index} has an empty prompt")
            original = len(prompt)
            if a.max_prompt_length is not None:  # keep the end, as DPOTrainer
                prompt = prompt[-a.max_prompt_length:]
            if a.max_length is not None:  # room for the completion: the end kept, as TRL
                prompt = prompt[-(a.max_length - a.max_new_tokens):]
            if len(prompt) + a.max_new_tokens > positions:
                raise ValueError(
                    f"{name} record {index}: the prompt ({len(prompt)} tokens"
                    + (" after truncation" if len(prompt) < original else "")
                    + f") plus max_new_tokens ({a.max_new_tokens}) exceeds the model's maximum "
                    f"positions ({positions}): set max_prompt_length or max_length (longer "
                    "prompts keep their end), or a smaller max_new_tokens")
            examples.append(PreferenceExample(prompt, [], index=index))
        return examples

    def _load_reference(self, ref_model):
        """A reference model other than the policy, whose positions must hold
        each prompt plus max_new_tokens too (it scores the samples)."""
        reference = super()._load_reference(ref_model)
        limit, room = reference.max_positions, self.args.max_new_tokens
        for examples, name in ((self.train_examples, "train_dataset"),
                               (self.eval_examples, "eval_dataset")):
            for e in examples or ():
                if len(e.prompt_ids) + room > limit:
                    raise ValueError(f"{name} record {e.index}: the prompt ({len(e.prompt_ids)} "
                                     f"tokens) plus max_new_tokens ({room}) exceeds the "
                                     f"ref_model's maximum positions ({limit})")
        return reference

    def _score(self, prompt, completion):
        eos = self.processing_class.eos_token_id if self.processing_class else None
        if isinstance(self.reward_model, RewardModel):
            value = self.reward_model.score([completion], prompts=[prompt])[0]
        elif self.processing_class is not None:
            value = self.reward_model(self.processing_class.decode(prompt),
                                      self.processing_class.decode(
                                          completion, skip_special_tokens=True))
        else:
            value = self.reward_model(prompt, completion)
        try:
            score = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{_reward_name(self.reward_model)} (reward_model) returned "
                             f"{value!r}, not a number") from None
        if not np.isfinite(score):
            raise ValueError(f"{_reward_name(self.reward_model)} (reward_model) returned "
                             f"{score}, not a finite number")
        if self.args.missing_eos_penalty is not None and (eos is None or completion[-1] != eos):
            score -= self.args.missing_eos_penalty
        return score

    def _micro_step(self, examples, normaliser, train):
        a = self.args
        eos = self.processing_class.eos_token_id if self.processing_class else None
        samples = self.model.generate([e.prompt_ids for e in examples],
                                      max_new_tokens=a.max_new_tokens, do_sample=True,
                                      temperature=a.temperature, top_k=a.top_k,
                                      top_p=a.top_p, repetition_penalty=a.repetition_penalty,
                                      eos_token_id=eos, num_return_sequences=2,
                                      seed=round_seed(a.seed, self.state.global_step,
                                                      examples[0].index))
        pairs = []
        for i, example in enumerate(examples):
            first, second = samples[2 * i], samples[2 * i + 1]
            if self._score(example.prompt_ids, first) >= self._score(example.prompt_ids,
                                                                      second):
                pairs.append(PreferenceExample(example.prompt_ids, [first, second]))
            else:
                pairs.append(PreferenceExample(example.prompt_ids, [second, first]))
        self.last_pairs = pairs
        metrics, tokens = super()._micro_step(pairs, normaliser, train)
        return dict(metrics, beta=self.beta()), tokens
