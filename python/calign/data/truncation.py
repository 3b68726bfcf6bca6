"""How long sequences are cut before training: the four TRL settings
(max_length, max_prompt_length, max_completion_length, truncation_mode) as
one value the data functions take, whatever the trainer."""

from dataclasses import dataclass

from calign import checks

TRUNCATION_MODES = ("keep_start", "keep_end")


@dataclass(frozen=True)
class Truncation:
    """Limits in tokens (None: no limit) and which end of a too-long sequence
    is kept. The default cuts nothing."""

    max_length: int = None             # prompt + completion
    max_prompt_length: int = None      # longer prompts keep their end
    max_completion_length: int = None  # longer completions keep their start
    truncation_mode: str = "keep_start"

    def __post_init__(self):
        for name in ("max_length", "max_prompt_length", "max_completion_length"):
            # at least 2: one prompt token and one completion token
            object.__setattr__(self, name, checks.integer(name, getattr(self, name), 2,
                                                          allow_none=True))
        checks.choice("truncation_mode", self.truncation_mode, TRUNCATION_MODES)

    @classmethod
    def of(cls, config):
        """The truncation settings of a trainer config (any object with the four fields)."""
        return cls(config.max_length, config.max_prompt_length, config.max_completion_length,
                   config.truncation_mode)

    def apply(self, prompt, completions):
        """Applies max_prompt_length, max_completion_length and max_length to token ids.

        Returns (prompt, completions, None), or (None, None, reason) when the
        example must be skipped (it would train on nothing, or give NaN)."""
        if self.max_prompt_length is not None:
            prompt = prompt[-self.max_prompt_length:]
        if self.max_completion_length is not None:
            completions = [c[:self.max_completion_length] for c in completions]
        max_length = self.max_length
        if max_length is not None:
            if self.truncation_mode == "keep_start":
                if len(prompt) >= max_length:
                    return None, None, "prompt alone reaches max_length"
                completions = [c[:max_length - len(prompt)] for c in completions]
            else:
                longest = max(len(c) for c in completions)
                if longest >= max_length:
                    return None, None, "a completion alone reaches max_length"
                prompt = prompt[len(prompt) - min(len(prompt), max_length - longest):]
        if len(prompt) == 0:
            return None, None, "empty prompt"
        if any(len(c) == 0 for c in completions):
            return None, None, "empty completion"
        return prompt, completions, None
