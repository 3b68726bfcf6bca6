"""Self-Rewarding: the policy judges its own samples (Yuan et al. 2024)."""

import re

import numpy as np

from calign import checks
from calign.selfimprove.checks import check_model, check_prompts, check_tokenizer
from calign.selfimprove.sampling import completion_text, dpo_record, sample


DEFAULT_JUDGE_TEMPLATE = (
    "Review the user's question and the corresponding response using the additive 5-point "
    "scoring system described below. Points are accumulated: add 1 point if the response is "
    "relevant, a second if it addresses a substantial portion of the question, a third if it "
    "answers the basic elements usefully, a fourth if it is clearly written from an AI "
    "assistant's perspective, well organised and helpful, and a fifth if it is impeccably "
    "tailored to the question without extraneous information.\n\n"
    "User: {prompt}\n<response>{response}</response>\n\n"
    'After examining the response, conclude with the line "Score: <total points>".')
SCORE_PATTERN = re.compile(r"Score:\s*([0-5](?:\.\d+)?)")


def parse_judge_score(text):
    """The last 'Score: x' (0 to 5) in a judge's answer, or None."""
    found = SCORE_PATTERN.findall(text)
    return float(found[-1]) if found else None


_JUDGE_FIELDS = ("prompt", "response")


def _judge_prompt_ids(model, tokenizer, template, prompt_text, response_text,
                      judge_max_new_tokens, index, k=None):
    """Token ids of the judge prompt for prompt `index`, candidate `k` (None:
    the up-front check with an empty response), or a ValueError saying it does
    not fit the model with judge_max_new_tokens."""
    ids = tokenizer.encode(template.format(prompt=prompt_text, response=response_text))
    limit = model.max_positions
    if len(ids) + judge_max_new_tokens > limit:
        which = (f"the judge prompt for prompt {index} (judge_template filled in with the "
                 f"prompt and an empty response) already has {len(ids)} tokens"
                 if k is None else
                 f"the judge prompt for prompt {index}, candidate {k} (judge_template filled "
                 f"in with the prompt and the sampled response) has {len(ids)} tokens")
        raise ValueError(f"{which}; with judge_max_new_tokens ({judge_max_new_tokens}) that "
                         f"exceeds the model's maximum positions ({limit}): use a shorter "
                         "judge_template, shorter prompts, a smaller max_new_tokens (shorter "
                         "responses) or a smaller judge_max_new_tokens")
    return ids


def self_rewarding_pairs(model, prompts, tokenizer, judge_template=DEFAULT_JUDGE_TEMPLATE, n=4,
                         judge_samples=3, judge_max_new_tokens=64, **sampling):
    """Self-Rewarding pairs: the policy scores each of its n samples judge_samples
    times with the judge template (scores parsed, averaged; a sample whose
    judgements are all unparsable is dropped and counted); highest vs lowest.
    The judge prompt is text, so a tokenizer is required (token-id prompts are
    decoded with it). The judgements are seeded from sampling's seed (None:
    unseeded)."""
    n = checks.integer("n", n, 2)
    judge_samples = checks.integer("judge_samples", judge_samples, 1)
    judge_max_new_tokens = checks.integer("judge_max_new_tokens", judge_max_new_tokens, 1)
    checks.format_template("judge_template", judge_template, _JUDGE_FIELDS)
    if tokenizer is None:
        raise ValueError("self_rewarding_pairs needs tokenizer=: the judge prompt is text built "
                         "from judge_template, and the judgements are parsed as text")
    tokenizer = check_tokenizer("tokenizer", tokenizer)
    check_model("model", model)
    seed = checks.seed("seed", sampling.get("seed", 0), allow_none=True)
    prompt_ids = check_prompts("prompts", prompts, tokenizer, model)
    for index, p in enumerate(prompt_ids):  # before sampling: would the judge prompt fit?
        _judge_prompt_ids(model, tokenizer, judge_template, tokenizer.decode(p), "",
                          judge_max_new_tokens, index)
    prompt_ids, samples = sample(model, prompt_ids, n, tokenizer, **sampling)
    records, unparsable, ties = [], 0, 0
    for index, (p, completions) in enumerate(zip(prompt_ids, samples)):
        prompt_text = tokenizer.decode(p)
        judged = []
        for k, c in enumerate(completions):
            judge_ids = _judge_prompt_ids(model, tokenizer, judge_template, prompt_text,
                                          completion_text(tokenizer, c), judge_max_new_tokens,
                                          index, k)
            outputs = model.generate([judge_ids],
                                     max_new_tokens=judge_max_new_tokens, do_sample=True,
                                     num_return_sequences=judge_samples,
                                     eos_token_id=tokenizer.eos_token_id,
                                     seed=None if seed is None else seed + 1000 * index + k)
            scores = [s for s in (parse_judge_score(completion_text(tokenizer, o))
                                  for o in outputs) if s is not None]
            if not scores:
                unparsable += 1
                continue
            judged.append((float(np.mean(scores)), c))
        if len(judged) < 2 or max(j[0] for j in judged) == min(j[0] for j in judged):
            ties += 1
            continue
        best = max(judged, key=lambda j: j[0])
        worst = min(judged, key=lambda j: j[0])
        records.append(dpo_record(p, best[1], worst[1], tokenizer, score_chosen=best[0],
                                  score_rejected=worst[0]))
    return records, {"prompts": len(prompt_ids), "pairs": len(records),
                     "unparsable_samples": unparsable, "skipped": ties}
