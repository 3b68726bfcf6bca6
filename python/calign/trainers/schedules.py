"""Learning-rate schedules, as transformers' get_scheduler defines them.

lr(step) is the rate of the update taken at optimizer step `step` (0-based)."""

import math

from calign.trainers.training_args import steps_of


def warmup_steps_of(config, total_steps):
    """warmup_steps (a fraction in (0, 1): of total_steps, rounded up, as
    transformers' get_warmup_steps), else warmup_ratio of total_steps."""
    if config.warmup_steps > 0:
        return steps_of(config.warmup_steps, total_steps)
    return math.ceil(config.warmup_ratio * total_steps)


def learning_rate(config, step, total_steps):
    """config.learning_rate times the schedule's factor at `step`."""
    warmup = warmup_steps_of(config, total_steps)
    kind = config.lr_scheduler_type
    if kind == "constant":
        factor = 1.0
    elif step < warmup:
        factor = step / max(1, warmup)
    elif kind == "constant_with_warmup":
        factor = 1.0
    elif kind == "linear":
        factor = max(0.0, (total_steps - step) / max(1, total_steps - warmup))
    else:  # cosine: num_cycles cycles (half a cycle by default) over the steps after warm-up
        cycles = (config.lr_scheduler_kwargs or {}).get("num_cycles", 0.5)
        progress = (step - warmup) / max(1, total_steps - warmup)
        factor = max(0.0, 0.5 * (1.0 + math.cos(math.pi * 2.0 * cycles * progress)))
    return config.learning_rate * factor
