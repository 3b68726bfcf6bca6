"""Pairs from scored or voted samples: on-policy best/worst, ScPO, DivPO."""

import math
from collections import Counter

import numpy as np

from calign import checks
from calign.model import pack_shared_prefix
from calign.selfimprove.checks import check_callable, check_scorer, check_tokenizer
from calign.selfimprove.sampling import completion_text, dpo_record, sample, score_completions


def on_policy_pairs(model, prompts, scorer, n=4, tokenizer=None, **sampling):
    """Best vs worst of n samples by score; prompts whose samples all score the
    same are skipped (no preference to learn)."""
    n = checks.integer("n", n, 2)
    check_scorer("scorer", scorer)
    tokenizer = check_tokenizer("tokenizer", tokenizer)
    prompt_ids, samples = sample(model, prompts, n, tokenizer, **sampling)
    records, ties = [], 0
    for p, completions in zip(prompt_ids, samples):
        scores = score_completions(scorer, p, completions, tokenizer)
        best, worst = int(np.argmax(scores)), int(np.argmin(scores))
        if scores[best] == scores[worst]:
            ties += 1
            continue
        records.append(dpo_record(p, completions[best], completions[worst], tokenizer,
                                  score_chosen=scores[best], score_rejected=scores[worst]))
    return records, {"prompts": len(prompt_ids), "pairs": len(records), "skipped_ties": ties}


def scpo_pairs(model, prompts, extract_answer, n=8, min_margin=0.0, tokenizer=None,
               **sampling):
    """Self-consistency preference pairs (ScPO): votes over the final answers
    extracted from n samples; chosen has the most-voted answer, rejected the
    least-voted; weight = (votes_chosen - votes_rejected) / n, pairs below
    min_margin dropped. Samples whose answer cannot be extracted (None) do not
    vote and are never chosen. min_margin is a fraction of the n votes, in [0, 1]."""
    n = checks.integer("n", n, 2)
    check_callable("extract_answer", extract_answer, "callable(completion) -> answer")
    min_margin = checks.real("min_margin", min_margin, 0.0, 1.0,
                             note=" (a fraction of the n votes)")
    tokenizer = check_tokenizer("tokenizer", tokenizer)
    prompt_ids, samples = sample(model, prompts, n, tokenizer, **sampling)
    records, dropped = [], 0
    for p, completions in zip(prompt_ids, samples):
        answers = [extract_answer(completion_text(tokenizer, c) if tokenizer is not None else c)
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
        records.append(dpo_record(p, chosen, rejected, tokenizer, weight=weight))
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
    n = checks.integer("n", n, 2)
    check_scorer("scorer", scorer)
    checks.choice("diversity", diversity, ("logprob", "ngram"))
    quality_percentile = checks.real("quality_percentile", quality_percentile, 0.0, 100.0)
    tokenizer = check_tokenizer("tokenizer", tokenizer)
    prompt_ids, samples = sample(model, prompts, n, tokenizer, **sampling)
    records, skipped = [], 0
    for p, completions in zip(prompt_ids, samples):
        completions = [c if c else [] for c in completions]
        scores = np.array(score_completions(scorer, p, completions, tokenizer))
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
        records.append(dpo_record(p, completions[chosen], completions[rejected], tokenizer))
    return records, {"prompts": len(prompt_ids), "pairs": len(records), "skipped": skipped}
