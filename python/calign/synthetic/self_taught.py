"""Self-Taught Evaluators (Wang, Kulikov, Golovneva, Yu, Yuan, Dwivedi-Yu,
Pang, Fazel-Zarandi, Weston, Li 2024, arXiv 2408.02666): a judge trained
without human labels.

1. response_pairs: for each instruction, a response to it (the better one)
   and a response to a deliberately altered instruction (worse for the
   original instruction by construction). The paper asks the LLM for a
   "similar but different" instruction; here `alter` is a callable(text) ->
   text, or None to have the model write one with ALTER_TEMPLATE.
2. correct_judgements: the current judge samples `samples` verdicts per pair
   with the pairwise JUDGE_TEMPLATE (MT-Bench's "[[A]]"/"[[B]]" format, which
   the paper uses), the better response put first or second at random; the
   judgements whose verdict picks the better response are the correct ones,
   and one of them (chosen at random) becomes an SFT record (prompt: the
   judge prompt, completion: the judgement).
3. iterate: M_{i+1} = SFT of M_i on the correct judgements of M_i (the
   pairs are built once, by the starting model, as the paper builds them
   with its seed model). The paper's choice of starting each round's
   fine-tuning from M_i or from the seed model is not confirmed here:
   from_seed=True trains each round from the starting model instead.

Verdicts are parsed as parse_verdict does; a judgement without one counts as
unparsable (selfimprove.parse_judge_score is its pointwise counterpart).
"""

import dataclasses
import os
import re

import numpy as np

from calign import checks
from calign.selfimprove.checks import check_model, check_tokenizer

JUDGE_TEMPLATE = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by "
    "two AI assistants to the user question displayed below. You should choose the assistant "
    "that follows the user's instructions and answers the user's question better. Your "
    "evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, "
    "creativity, and level of detail of their responses. Begin your evaluation by comparing "
    "the two responses and provide a short explanation. Avoid any position biases and ensure "
    "that the order in which the responses were presented does not influence your decision. "
    "Do not allow the length of the responses to influence your evaluation. Do not favor "
    "certain names of the assistants. Be as objective as possible. After providing your "
    "explanation, output your final verdict by strictly following this format: \"[[A]]\" if "
    "assistant A is better, \"[[B]]\" if assistant B is better.\n\n"
    "[User Question]\n{instruction}\n\n[The Start of Assistant A's Answer]\n{response_a}\n"
    "[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n{response_b}\n"
    "[The End of Assistant B's Answer]")
ALTER_TEMPLATE = (
    "Below is an instruction. Write a similar but different instruction: one whose best "
    "answer would be a poor answer to the original. Output only the new instruction.\n\n"
    "Instruction: {instruction}\nNew instruction:")
VERDICT_PATTERN = re.compile(r"\[\[([AB])\]\]")
JUDGE_FIELDS = ("instruction", "response_a", "response_b")  # what JUDGE_TEMPLATE fills in


def parse_verdict(text):
    """The last "[[A]]" or "[[B]]" in a judgement: "A", "B", or None."""
    found = VERDICT_PATTERN.findall(text)
    return found[-1] if found else None


def _check_instructions(instructions):
    if isinstance(instructions, (str, bytes)) or not isinstance(instructions, (list, tuple)):
        raise TypeError(f"instructions must be a list of strings, not "
                        f"{type(instructions).__name__}")
    if not instructions:
        raise ValueError("instructions is empty")
    return [checks.text(f"instructions[{i}]", t) for i, t in enumerate(instructions)]


def _prompt_ids(tokenizer, text, chat):
    if chat:
        return tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                             add_generation_prompt=True, tokenize=True)
    return tokenizer.encode(text)


def _generate_texts(model, tokenizer, texts, chat, max_new_tokens, **settings):
    prompts = [_prompt_ids(tokenizer, t, chat) for t in texts]
    for i, p in enumerate(prompts):
        checks.require(len(p) + max_new_tokens <= model.max_positions, "max_new_tokens",
                       max_new_tokens, f"at most {model.max_positions - len(p)} for prompt {i} "
                       f"({len(p)} tokens) to fit the model's positions")
    outputs = model.generate(prompts, max_new_tokens=max_new_tokens,
                             eos_token_id=tokenizer.eos_token_id, **settings)
    return prompts, outputs


def response_pairs(model, tokenizer, instructions, alter=None, *, chat=True,
                   max_new_tokens=64, seed=0):
    """For each instruction: {"instruction", "altered_instruction", "chosen"
    (the model's greedy answer to the instruction), "rejected" (its answer to
    the altered instruction)}. Instructions whose alteration is empty or
    unchanged, and pairs whose two answers are the same text, are dropped.
    chat: put prompts through the chat template (else raw text).

    Returns (pairs, summary {"instructions", "pairs", "unaltered",
    "same_answer"})."""
    check_model("model", model)
    tokenizer = check_tokenizer("tokenizer", tokenizer)
    instructions = _check_instructions(instructions)
    max_new_tokens = checks.integer("max_new_tokens", max_new_tokens, 1)
    seed = checks.seed("seed", seed)
    if alter is None:
        _, outputs = _generate_texts(model, tokenizer, [ALTER_TEMPLATE.format(instruction=t)
                                                        for t in instructions], chat,
                                     max_new_tokens, do_sample=True, seed=seed)
        altered = [tokenizer.decode(o, skip_special_tokens=True).strip() for o in outputs]
    else:
        if not callable(alter):
            raise TypeError(f"alter must be None or a callable(instruction) -> instruction, "
                            f"not {type(alter).__name__}")
        altered = [checks.text("alter(...) result", alter(t)) for t in instructions]
    usable = [i for i, a in enumerate(altered) if a and a != instructions[i]]
    n = len(instructions)
    summary = {"instructions": n, "pairs": 0, "unaltered": n - len(usable), "same_answer": 0}
    if not usable:
        return [], summary
    originals = [instructions[i] for i in usable]
    changed = [altered[i] for i in usable]
    _, answers = _generate_texts(model, tokenizer, originals + changed, chat,
                                 max_new_tokens, do_sample=False, repetition_penalty=1.0)
    texts = [tokenizer.decode(a, skip_special_tokens=True).strip() for a in answers]
    m = len(usable)
    pairs = [{"instruction": t, "altered_instruction": a, "chosen": c, "rejected": r}
             for t, a, c, r in zip(originals, changed, texts[:m], texts[m:]) if c != r]
    summary.update(pairs=len(pairs), same_answer=m - len(pairs))
    return pairs, summary


def _check_pairs(pairs):
    if not isinstance(pairs, (list, tuple)) or not pairs:
        raise ValueError("pairs must be a non-empty list of response pairs (from "
                         "response_pairs)")
    for i, p in enumerate(pairs):
        checks.require(isinstance(p, dict) and all(isinstance(p.get(k), str) for k in (
            "instruction", "chosen", "rejected")), f"pairs[{i}]", p,
            "a dict with text 'instruction', 'chosen' and 'rejected'")
    return pairs


def correct_judgements(model, tokenizer, pairs, *, judge_template=JUDGE_TEMPLATE, samples=8,
                       temperature=1.0, top_p=1.0, chat=True, max_new_tokens=256, seed=0):
    """The judge's sampled verdicts on each pair, the better response first
    (A) or second (B) at random; one correct judgement (chosen at random
    among them) per pair becomes an SFT record {"prompt", "completion",
    "better": "A" or "B"} (conversational messages with chat, else text).

    Returns (records, summary {"pairs", "judgements", "correct", "wrong",
    "unparsable", "pairs_with_a_correct_judgement"})."""
    check_model("model", model)
    tokenizer = check_tokenizer("tokenizer", tokenizer)
    pairs = _check_pairs(pairs)
    checks.format_template("judge_template", judge_template, JUDGE_FIELDS)
    samples = checks.integer("samples", samples, 1)
    max_new_tokens = checks.integer("max_new_tokens", max_new_tokens, 1)
    seed = checks.seed("seed", seed)
    rng = np.random.default_rng(seed)
    better = ["A" if rng.random() < 0.5 else "B" for _ in pairs]
    texts = [judge_template.format(
        instruction=p["instruction"],
        response_a=p["chosen"] if b == "A" else p["rejected"],
        response_b=p["rejected"] if b == "A" else p["chosen"]) for p, b in zip(pairs, better)]
    _, outputs = _generate_texts(
        model, tokenizer, texts, chat, max_new_tokens, do_sample=True,
        temperature=checks.real("temperature", temperature, 0.0, open_low=True),
        top_p=checks.real("top_p", top_p, 0.0, 1.0, open_low=True),
        num_return_sequences=samples, seed=seed)
    records, counts = [], dict(correct=0, wrong=0, unparsable=0)
    for i, b in enumerate(better):
        judgements = [tokenizer.decode(o, skip_special_tokens=True).strip()
                      for o in outputs[i * samples:(i + 1) * samples]]
        verdicts = [parse_verdict(j) for j in judgements]
        right = [j for j, v in zip(judgements, verdicts) if v == b]
        counts["correct"] += len(right)
        counts["unparsable"] += verdicts.count(None)
        counts["wrong"] += sum(v is not None and v != b for v in verdicts)
        if right:
            judgement = right[int(rng.integers(len(right)))]
            records.append({"prompt": [{"role": "user", "content": texts[i]}],
                            "completion": [{"role": "assistant", "content": judgement}],
                            "better": b} if chat else
                           {"prompt": texts[i], "completion": judgement, "better": b})
    return records, dict(pairs=len(pairs), judgements=len(pairs) * samples, **counts,
                         pairs_with_a_correct_judgement=len(records))


def judge_accuracy(model, tokenizer, pairs, *, judge_template=JUDGE_TEMPLATE, chat=True,
                   max_new_tokens=256):
    """The fraction of greedy verdicts that pick the better response, each
    pair judged in both orders (2 * len(pairs) verdicts; unparsable ones
    count as wrong)."""
    check_model("model", model)
    tokenizer = check_tokenizer("tokenizer", tokenizer)
    pairs = _check_pairs(pairs)
    checks.format_template("judge_template", judge_template, JUDGE_FIELDS)
    texts = [judge_template.format(instruction=p["instruction"], response_a=a, response_b=b)
             for p in pairs for a, b in ((p["chosen"], p["rejected"]),
                                         (p["rejected"], p["chosen"]))]
    _, outputs = _generate_texts(model, tokenizer, texts, chat,
                                 checks.integer("max_new_tokens", max_new_tokens, 1),
                                 do_sample=False, repetition_penalty=1.0)
    verdicts = [parse_verdict(tokenizer.decode(o, skip_special_tokens=True)) for o in outputs]
    return float(np.mean([v == ("A" if k % 2 == 0 else "B") for k, v in enumerate(verdicts)]))


def iterate(model, tokenizer, pairs, args, iterations=2, *, from_seed=False, seed=0,
            evaluate=None, **judging):
    """The Self-Taught Evaluator loop: iteration t takes the correct
    judgements of M_t on `pairs` (correct_judgements(..., seed=seed + t - 1,
    **judging)) and fine-tunes a copy of M_t (of the starting model with
    from_seed) on them with args (a calign.SFTConfig; output_dir/iteration<t>)
    to give M_{t+1}. An iteration without a correct judgement leaves the
    model unchanged.

    Returns (models, summaries): models[0] is the starting model (not
    modified); summaries[t - 1] holds iteration t's judging summary, its SFT
    steps and, with evaluate (callable(model) -> dict), its numbers for
    M_{t+1}."""
    from calign.model import Model
    from calign.trainers.config import SFTConfig
    from calign.trainers.sft import SFTTrainer

    check_model("model", model)
    if not isinstance(args, SFTConfig):
        raise TypeError(f"args must be a calign.SFTConfig, not {type(args).__name__}")
    iterations = checks.integer("iterations", iterations, 1)
    seed = checks.seed("seed", seed)
    pairs = _check_pairs(pairs)
    if evaluate is not None and not callable(evaluate):
        raise TypeError("evaluate must be None or a callable(model) -> dict")
    models, summaries = [model], []
    for t in range(1, iterations + 1):
        current = models[-1]
        records, summary = correct_judgements(current, tokenizer, pairs, seed=seed + t - 1,
                                              **judging)
        following = Model(current.config)
        following.params[...] = (model if from_seed else current).params
        summary = dict(summary, iteration=t, steps=0)
        if records:
            trainer = SFTTrainer(following, args=dataclasses.replace(
                args, output_dir=os.path.join(args.output_dir, f"iteration{t}")),
                train_dataset=[{"prompt": r["prompt"], "completion": r["completion"]}
                               for r in records], processing_class=tokenizer)
            trainer.train()
            summary["steps"] = trainer.state.global_step
        if evaluate is not None:
            summary.update(evaluate(following))
        models.append(following)
        summaries.append(summary)
    return models, summaries
