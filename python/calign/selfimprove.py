"""Preference data from the model's own samples.

Each builder samples N completions per prompt with `Model.generate` (one
prefill per prompt, shared by its samples, seeded), scores or compares them,
and returns (records in the DPO trainer's format, a summary of what was kept).
Records hold the sampled `*_input_ids` (what DPO trains on) and, when a
tokenizer is given, the decoded text too.

- on_policy_pairs: best vs worst sample by a scorer (Tajwar et al. 2024).
- scpo_pairs: self-consistency votes over extracted answers, vote-weighted
  (Prasad et al. 2024, ScPO).
- divpo_pairs: diverse preference optimisation (Lanchantin et al. 2025).
- self_rewarding_pairs: the policy judges its own samples with an additive
  5-point rubric (Yuan et al. 2024).
- select_by_reward_gap: keep the pairs whose DPO implicit reward gap is
  smallest (Qi et al. 2025).
- iterate: rounds of "build pairs with the current model, DPO from it" (the
  Self-Rewarding loop M1 -> M2 -> M3 of Yuan et al. 2024 by default; any
  builder above, e.g. ScPO's rounds with DPOConfig(loss_type="scpo")).
"""

import dataclasses
import math
import numbers
import os
import re
import reprlib
import string
from collections import Counter

import numpy as np

from calign import losses
from calign.model import Model, RewardModel, pack_shared_prefix
from calign.tokenizer import Tokenizer

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


# ---- argument checks (before any sampling) -------------------------------------

def _is_int(value):
    """An integer, Python's or NumPy's, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value):
    """A real number, Python's or NumPy's, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _check_int(value, name, minimum):
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_n(n, minimum=2):
    return _check_int(n, "n", minimum)


def _check_real(value, name, low, high, requirement):
    """value as a float when it is a finite real number in [low, high]."""
    if not _is_real(value) or not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{name} must be {requirement}, got {value!r}")
    return float(value)


def _check_seed(seed):
    """None (unseeded: fresh randomness each call, as Model.generate) or an integer."""
    if seed is not None and not _is_int(seed):
        raise ValueError(f"seed must be an integer or None (unseeded), got {seed!r}")
    return None if seed is None else int(seed)


def _check_model(model, name="model"):
    if not isinstance(model, Model):
        raise TypeError(f"{name} must be a calign.Model, not {type(model).__name__}")


def _tokenizer(tokenizer):
    """None, a calign.Tokenizer, or a folder holding tokenizer.json (loaded)."""
    if tokenizer is None or isinstance(tokenizer, Tokenizer):
        return tokenizer
    if isinstance(tokenizer, (str, os.PathLike)):
        if not os.path.isfile(os.path.join(tokenizer, "tokenizer.json")):
            raise ValueError(f"tokenizer {os.fspath(tokenizer)!r} is not a folder holding "
                             "tokenizer.json")
        return Tokenizer.from_pretrained(os.fspath(tokenizer))
    raise TypeError("tokenizer must be a calign.Tokenizer, a folder with tokenizer.json, or "
                    f"None, not {type(tokenizer).__name__}")


def _check_callable(value, name, signature):
    if not callable(value):
        raise TypeError(f"{name} must be a {signature}, not {type(value).__name__}")


def _check_scorer(scorer):
    if not isinstance(scorer, RewardModel) and not callable(scorer):
        raise TypeError("scorer must be a calign.RewardModel or a callable(prompt, completion)")


def _prompt_ids(prompts, tokenizer, model=None):
    """Token ids of each prompt (text is encoded with tokenizer); checks the
    ids against the model's vocabulary when a model is given."""
    hint = "prompts must be a list of prompts (strings, or lists of token ids)"
    if prompts is None or isinstance(prompts, (str, bytes, dict)):
        raise TypeError(f"{hint}, not {type(prompts).__name__}")
    try:
        prompts = list(prompts)
    except TypeError:
        raise TypeError(f"{hint}, not {type(prompts).__name__}") from None
    if not prompts:
        raise ValueError("prompts is empty")
    vocab = model.vocab_size if model is not None else None
    ids = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            if tokenizer is None:
                raise ValueError("text prompts need tokenizer=")
            p = tokenizer.encode(p)
        elif _is_int(p):
            raise TypeError(f"{hint}: prompt {i} is the integer {p!r}; one prompt of token ids "
                            "is written [[1, 2, 3]], not [1, 2, 3]")
        elif not (isinstance(p, (list, tuple)) or (isinstance(p, np.ndarray) and p.ndim == 1)) \
                or not all(_is_int(t) for t in p):
            raise TypeError(f"{hint}: prompt {i} is {reprlib.repr(p)}")
        p = [int(t) for t in p]
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty")
        if vocab is not None and not all(0 <= t < vocab for t in p):
            bad = next(t for t in p if not 0 <= t < vocab)
            raise ValueError(f"prompt {i} holds token id {bad}, outside the model's vocabulary "
                             f"[0, {vocab})")
        ids.append(p)
    return ids


def sample(model, prompts, n, tokenizer=None, max_new_tokens=32, temperature=1.0, top_p=1.0,
           seed=0):
    """n sampled completions per prompt: (prompt ids, [[completion ids] * n] per prompt).
    seed=None samples unseeded (fresh randomness each call), as Model.generate."""
    _check_model(model)
    n = _check_n(n, minimum=1)
    tokenizer = _tokenizer(tokenizer)
    max_new_tokens = _check_int(max_new_tokens, "max_new_tokens", 1)
    temperature = _check_real(temperature, "temperature", 0.0, math.inf, "a finite number > 0")
    if temperature == 0.0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    top_p = _check_real(top_p, "top_p", 0.0, 1.0, "a number in (0, 1]")
    if top_p == 0.0:
        raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")
    seed = _check_seed(seed)
    prompt_ids = _prompt_ids(prompts, tokenizer, model)
    eos = tokenizer.eos_token_id if tokenizer is not None else None
    flat = model.generate(prompt_ids, max_new_tokens=max_new_tokens, do_sample=True,
                          temperature=temperature, top_p=top_p, eos_token_id=eos,
                          num_return_sequences=n, seed=seed)
    return prompt_ids, [flat[i * n:(i + 1) * n] for i in range(len(prompt_ids))]


def _text(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=True) if tokenizer is not None else None


def _record(prompt_ids, chosen, rejected, tokenizer, **extra):
    """A DPO record of the sampled token ids, which the trainer uses verbatim
    (decoding and re-encoding the text could give other tokens), plus the
    text for reading when there is a tokenizer."""
    record = {"prompt_input_ids": list(prompt_ids), "chosen_input_ids": list(chosen),
              "rejected_input_ids": list(rejected)}
    if tokenizer is not None:
        record.update(prompt=tokenizer.decode(prompt_ids), chosen=_text(tokenizer, chosen),
                      rejected=_text(tokenizer, rejected))
    record.update(extra)
    return record


def _scores(scorer, prompt_ids, completions, tokenizer):
    """A float per completion: a RewardModel, or a callable(prompt, completion)."""
    if isinstance(scorer, RewardModel):
        return [float(x) for x in scorer.score(completions, prompts=[prompt_ids] * len(completions))]
    if not callable(scorer):
        raise TypeError("scorer must be a calign.RewardModel or a callable(prompt, completion)")
    prompt = tokenizer.decode(prompt_ids) if tokenizer is not None else prompt_ids
    out = []
    for c in completions:
        value = scorer(prompt, _text(tokenizer, c) if tokenizer is not None else c)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"the scorer returned {value!r}, not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"the scorer returned {value}, not a finite number")
        out.append(value)
    return out


def on_policy_pairs(model, prompts, scorer, n=4, tokenizer=None, **sampling):
    """Best vs worst of n samples by score; prompts whose samples all score the
    same are skipped (no preference to learn)."""
    n = _check_n(n)
    _check_scorer(scorer)
    tokenizer = _tokenizer(tokenizer)
    prompt_ids, samples = sample(model, prompts, n, tokenizer, **sampling)
    records, ties = [], 0
    for p, completions in zip(prompt_ids, samples):
        scores = _scores(scorer, p, completions, tokenizer)
        best, worst = int(np.argmax(scores)), int(np.argmin(scores))
        if scores[best] == scores[worst]:
            ties += 1
            continue
        records.append(_record(p, completions[best], completions[worst], tokenizer,
                               score_chosen=scores[best], score_rejected=scores[worst]))
    return records, {"prompts": len(prompt_ids), "pairs": len(records), "skipped_ties": ties}


def scpo_pairs(model, prompts, extract_answer, n=8, min_margin=0.0, tokenizer=None,
               **sampling):
    """Self-consistency preference pairs (ScPO): votes over the final answers
    extracted from n samples; chosen has the most-voted answer, rejected the
    least-voted; weight = (votes_chosen - votes_rejected) / n, pairs below
    min_margin dropped. Samples whose answer cannot be extracted (None) do not
    vote and are never chosen. min_margin is a fraction of the n votes, in [0, 1]."""
    n = _check_n(n)
    _check_callable(extract_answer, "extract_answer", "callable(completion) -> answer")
    min_margin = _check_real(min_margin, "min_margin", 0.0, 1.0, "a number in [0, 1] (a "
                             "fraction of the n votes)")
    tokenizer = _tokenizer(tokenizer)
    prompt_ids, samples = sample(model, prompts, n, tokenizer, **sampling)
    records, dropped = [], 0
    for p, completions in zip(prompt_ids, samples):
        answers = [extract_answer(_text(tokenizer, c) if tokenizer is not None else c)
                   for c in completions]
        for a in answers:
            try:
                hash(a)
            except TypeError:
                raise TypeError(f"extract_answer returned {a!r}, a {type(a).__name__}, which "
                                "cannot be counted as a vote: return a hashable answer (a "
                                "string, number or tuple), or None for no vote") from None
        votes = Counter(a for a in answers if a is not None)
        if len(votes) < 2:
            dropped += 1
            continue
        ranked = votes.most_common()
        top, bottom = ranked[0], ranked[-1]
        weight = (top[1] - bottom[1]) / n
        if weight <= 0 or weight < min_margin:
            dropped += 1
            continue
        chosen = completions[answers.index(top[0])]
        rejected = completions[answers.index(bottom[0])]
        records.append(_record(p, chosen, rejected, tokenizer, weight=weight))
    return records, {"prompts": len(prompt_ids), "pairs": len(records), "dropped": dropped}


def _ngram_rarity(completions, order=2):
    """Mean rarity (-log relative frequency) of each completion's n-grams
    across the pool of completions."""
    grams = [[tuple(c[i:i + order]) for i in range(max(1, len(c) - order + 1))]
             for c in completions]
    counts = Counter(g for gs in grams for g in gs)
    total = sum(counts.values())
    return [float(np.mean([-math.log(counts[g] / total) for g in gs])) if gs else 0.0
            for gs in grams]


def _sequence_logps(model, prompt_ids, completions):
    batch = pack_shared_prefix([(prompt_ids, [c]) for c in completions])
    logps = model.packed_token_logprobs(batch)
    return [float(logps[s[0]].sum()) for s in batch.completion_slices]


def divpo_pairs(model, prompts, scorer, n=16, quality_percentile=50.0, diversity="logprob",
                tokenizer=None, **sampling):
    """Diverse preference pairs (DivPO): among samples scoring at or above the
    quality percentile, chosen = the most diverse (lowest model log-probability,
    or rarest n-grams in the pool); among those below, rejected = the least
    diverse. Prompts with an empty side are skipped."""
    n = _check_n(n)
    _check_scorer(scorer)
    if diversity not in ("logprob", "ngram"):
        raise ValueError(f"diversity must be 'logprob' or 'ngram', got {diversity!r}")
    quality_percentile = _check_real(quality_percentile, "quality_percentile", 0.0, 100.0,
                                     "a number in [0, 100]")
    tokenizer = _tokenizer(tokenizer)
    prompt_ids, samples = sample(model, prompts, n, tokenizer, **sampling)
    records, skipped = [], 0
    for p, completions in zip(prompt_ids, samples):
        completions = [c if c else [] for c in completions]
        scores = np.array(_scores(scorer, p, completions, tokenizer))
        threshold = np.percentile(scores, quality_percentile)
        good, bad = np.nonzero(scores >= threshold)[0], np.nonzero(scores < threshold)[0]
        usable = [i for i in range(n) if completions[i]]
        good = [i for i in good if i in usable]
        bad = [i for i in bad if i in usable]
        if not good or not bad:
            skipped += 1
            continue
        if diversity == "logprob":  # diversity = -log p
            logps = _sequence_logps(model, p, [completions[i] for i in usable])
            div = dict(zip(usable, (-x for x in logps)))
        else:
            div = dict(zip(usable, _ngram_rarity([completions[i] for i in usable])))
        chosen = max(good, key=lambda i: div[i])
        rejected = min(bad, key=lambda i: div[i])
        records.append(_record(p, completions[chosen], completions[rejected], tokenizer))
    return records, {"prompts": len(prompt_ids), "pairs": len(records), "skipped": skipped}


def parse_judge_score(text):
    """The last 'Score: x' (0 to 5) in a judge's answer, or None."""
    found = SCORE_PATTERN.findall(text)
    return float(found[-1]) if found else None


_JUDGE_FIELDS = ("prompt", "response")


def _check_judge_template(template):
    """A str.format template whose only placeholders are {prompt} and {response}
    (both present; literal braces doubled)."""
    if not isinstance(template, str):
        raise TypeError("judge_template must be a string with {prompt} and {response} "
                        f"placeholders, not {type(template).__name__}")
    braces = "write a literal brace as {{ or }}"
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"judge_template is not a valid format string ({exc}): "
                         f"{braces}") from None
    found = set()
    for _, field, spec, _ in parsed:
        if field is None:
            continue
        if field not in _JUDGE_FIELDS:
            kind = "positional placeholder" if field == "" or field.isdigit() else "placeholder"
            raise ValueError(f"judge_template has the {kind} {{{field}}}: only {{prompt}} and "
                             f"{{response}} are filled in; {braces}")
        if "{" in (spec or ""):
            raise ValueError(f"judge_template: {{{field}:{spec}}} has a nested placeholder; "
                             f"only {{prompt}} and {{response}} are filled in")
        found.add(field)
    if found != set(_JUDGE_FIELDS):
        raise ValueError("judge_template must contain {prompt} and {response} placeholders")
    try:
        template.format(prompt="", response="")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"judge_template cannot be filled in: {exc}") from None


def _judge_prompt_ids(model, tokenizer, template, prompt_text, response_text,
                      judge_max_new_tokens, index, k=None):
    """Token ids of the judge prompt for prompt `index`, candidate `k` (None:
    the up-front check with an empty response), or a ValueError saying it does
    not fit the model with judge_max_new_tokens."""
    ids = tokenizer.encode(template.format(prompt=prompt_text, response=response_text))
    limit = model._engine["max_positions"]
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
    n = _check_n(n)
    judge_samples = _check_int(judge_samples, "judge_samples", 1)
    judge_max_new_tokens = _check_int(judge_max_new_tokens, "judge_max_new_tokens", 1)
    _check_judge_template(judge_template)
    if tokenizer is None:
        raise ValueError("self_rewarding_pairs needs tokenizer=: the judge prompt is text built "
                         "from judge_template, and the judgements are parsed as text")
    tokenizer = _tokenizer(tokenizer)
    _check_model(model)
    seed = _check_seed(sampling.get("seed", 0))
    prompt_ids = _prompt_ids(prompts, tokenizer, model)
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
                                          _text(tokenizer, c), judge_max_new_tokens, index, k)
            outputs = model.generate([judge_ids],
                                     max_new_tokens=judge_max_new_tokens, do_sample=True,
                                     num_return_sequences=judge_samples,
                                     eos_token_id=tokenizer.eos_token_id,
                                     seed=None if seed is None else seed + 1000 * index + k)
            scores = [s for s in (parse_judge_score(_text(tokenizer, o)) for o in outputs)
                      if s is not None]
            if not scores:
                unparsable += 1
                continue
            judged.append((float(np.mean(scores)), c))
        if len(judged) < 2 or max(j[0] for j in judged) == min(j[0] for j in judged):
            ties += 1
            continue
        best = max(judged, key=lambda j: j[0])
        worst = min(judged, key=lambda j: j[0])
        records.append(_record(p, best[1], worst[1], tokenizer, score_chosen=best[0],
                               score_rejected=worst[0]))
    return records, {"prompts": len(prompt_ids), "pairs": len(records),
                     "unparsable_samples": unparsable, "skipped": ties}


def select_by_reward_gap(policy, reference, dataset, beta, fraction=0.1, tokenizer=None,
                         batch_size=16):
    """Keeps the `fraction` of preference pairs with the smallest DPO implicit
    reward gap beta[(log pi_c - log ref_c) - (log pi_r - log ref_r)] (Qi et al.
    2025). Returns (kept records, gaps of all records)."""
    from calign.data.preference import prepare_preference_data
    from calign.data.records import load_records
    from calign.trainers.config import DPOConfig
    from calign.trainers.packed import PackedPreferences

    fraction = _check_real(fraction, "fraction", 0.0, 1.0, "a number in (0, 1]")
    if fraction == 0.0:
        raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
    batch_size = _check_int(batch_size, "batch_size", 1)
    for name, m in (("policy", policy), ("reference", reference)):
        if not isinstance(m, Model):
            raise TypeError(f"{name} must be a calign.Model")
    tokenizer = _tokenizer(tokenizer)
    records = load_records(dataset, "dataset")
    if tokenizer is None:
        for index, record in enumerate(records):
            if "chosen_input_ids" not in record and "prompt_input_ids" not in record:
                raise ValueError(f"dataset record {index} holds text: pass tokenizer= (a "
                                 "calign.Tokenizer), or pre-tokenized fields")
    examples = prepare_preference_data(records, tokenizer, DPOConfig(output_dir="unused",
                                                                     max_length=None),
                                       "dataset")
    if len(examples) != len(records):
        raise ValueError("some records were skipped; select_by_reward_gap needs all of them")
    sums = {}
    for name, m in (("policy", policy), ("reference", reference)):
        parts = []
        for i in range(0, len(examples), batch_size):
            packed = PackedPreferences(examples[i:i + batch_size])
            hidden = m.forward_packed(packed.batch)
            parts.append(packed.sequence_sums(m.packed_scores(hidden, packed.batch)))
        sums[name] = np.concatenate(parts)
    out = losses.dpo_loss(sums["policy"][:, 0], sums["policy"][:, 1], sums["reference"][:, 0],
                          sums["reference"][:, 1], beta=beta)
    gaps = out.chosen_rewards - out.rejected_rewards
    keep = np.sort(np.argsort(gaps, kind="stable")[:max(1, int(round(fraction * len(gaps))))])
    return [records[i] for i in keep], gaps


def iterate(model, prompts, args, iterations=2, pairs=self_rewarding_pairs, tokenizer=None,
            seed=0, evaluate=None, **pairs_kwargs):
    """Iterated preference training on the model's own pairs.

    Iteration t (1-based) starts from M_t: `pairs(M_t, prompts, tokenizer=...,
    seed=seed + t - 1, **pairs_kwargs)` (seed=None: unseeded sampling in every
    iteration, as Model.generate) builds the records, then DPO with args
    trains a copy of M_t on them with M_t as the frozen reference; the result
    is M_{t+1} (Yuan et al. 2024, Sec. 2.3: M1 -> M2 -> M3 for two
    iterations). An iteration that yields no pair leaves the model unchanged.

    Args:
        model: the starting calign.Model (M1); it is not modified.
        prompts: the prompts every iteration samples from (text or token ids).
        args: a DPOConfig; iteration t writes to output_dir/iteration<t>.
        iterations: how many (>= 1).
        pairs: a builder with the signature of self_rewarding_pairs,
            on_policy_pairs, scpo_pairs or divpo_pairs.
        evaluate: optional callable(model) -> dict of numbers, added to the
            iteration's summary after training.
        pairs_kwargs: passed to the builder (n, judge_samples, scorer, ...).

    Returns:
        (models, summaries): models[0] is the starting model and models[t]
        the model after iteration t; summaries[t - 1] holds the builder's
        summary of iteration t, the DPO steps taken and the last logged
        training loss.
    """
    from calign.trainers.config import DPOConfig
    from calign.trainers.dpo import DPOTrainer

    if not isinstance(model, Model):
        raise TypeError(f"model must be a calign.Model, not {type(model).__name__}")
    if not isinstance(args, DPOConfig):
        raise TypeError(f"args must be a calign.DPOConfig, not {type(args).__name__}")
    iterations = _check_int(iterations, "iterations", 1)
    seed = _check_seed(seed)
    tokenizer = _tokenizer(tokenizer)
    if not callable(pairs):
        raise TypeError("pairs must be a pair builder such as selfimprove.self_rewarding_pairs")
    if evaluate is not None and not callable(evaluate):
        raise TypeError("evaluate must be None or a callable(model) -> dict")
    models, summaries = [model], []
    for t in range(1, iterations + 1):
        current = models[-1]
        built = pairs(current, prompts, tokenizer=tokenizer,
                      seed=None if seed is None else seed + t - 1, **pairs_kwargs)
        if not (isinstance(built, tuple) and len(built) == 2 and isinstance(built[1], dict)):
            raise TypeError(f"pairs must return (records, summary dict), got "
                            f"{reprlib.repr(built)}")
        records, summary = built
        following = Model(current.config)
        following.params[...] = current.params
        summary = dict(summary, iteration=t, steps=0, loss=None)
        if records:
            trainer = DPOTrainer(following, args=dataclasses.replace(
                args, output_dir=os.path.join(args.output_dir, f"iteration{t}")),
                train_dataset=records, processing_class=tokenizer)
            trainer.train()
            logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
            summary.update(steps=trainer.state.global_step, loss=logged[-1] if logged else None)
        if evaluate is not None:
            measured = evaluate(following)
            if not isinstance(measured, dict):
                raise TypeError(f"evaluate must return a dict of numbers, got "
                                f"{reprlib.repr(measured)}")
            summary.update(measured)
        models.append(following)
        summaries.append(summary)
    return models, summaries
