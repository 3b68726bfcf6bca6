"""Magpie: alignment data written by an aligned model from nothing but its
chat template (Xu et al. 2024, "Alignment Data Synthesis from Scratch by
Prompting Aligned LLMs with Nothing", arXiv 2406.08464; magpie-align/magpie
exp/gen_ins.py, gen_res.py, gen_po_multi_res.py, data_po/process_po.ipynb).

1. The pre-query template -- the chat template rendered up to where a user's
   text starts -- is all the model is given; what it samples is a user
   instruction (temperature 1, top_p 1, as gen_ins.py). Sampling stops at the
   template's end of turn and, with early_stopping (the paper's default), at
   the first newline: the newline's tokens are stop tokens and the text is
   cut at the newline (vLLM's stop string "\\n").
2. The model answers each instruction through the full template, greedily
   (magpie.sh res_temp=0).
3. Filters (options): instruction and response lengths, repetition in the
   response, instructions ending with ':' (data_filter.ipynb), and near
   duplicate instructions by word n-gram overlap (the paper finds them by
   embedding distance; n-gram Jaccard similarity stands in, no embedding
   model needed). Language tagging (lingua in the paper) is not done.
4. Preference pairs: K responses per instruction at temperature 0.8 (top_p 1),
   each scored by a calign.RewardModel or a callable(instruction, response);
   chosen = the highest, rejected = the lowest.

Multi-turn conversations repeat steps 1-2: the next instruction is sampled
after the conversation so far rendered up to the next user turn's text.
"""

import os

import numpy as np

from calign import checks
from calign.selfimprove.checks import check_model, check_scorer
from calign.selfimprove.sampling import scorer_value

# A user message no template contains: where it shows in the rendered text,
# the user's text starts.
SENTINEL = "\u2063MAGPIE-USER-TEXT\u2063"
PAPER_SAMPLING = dict(temperature=1.0, top_p=1.0)     # gen_ins.py
PAIR_SAMPLING = dict(temperature=0.8, top_p=1.0, k=5)  # gen_po_multi_res.py


def check_chat_tokenizer(name, tokenizer):
    """A tokenizer with a chat template (calign.Tokenizer or transformers')."""
    if tokenizer is None or not all(hasattr(tokenizer, a) for a in
                                    ("encode", "decode", "apply_chat_template")):
        raise TypeError(f"{name} must be a calign.Tokenizer with a chat template, not "
                        f"{type(tokenizer).__name__}")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{name} has no chat template (tokenizer_config.json's chat_template "
                         "or chat_template.jinja): Magpie samples instructions from the chat "
                         "template's user header, so it needs the template of an aligned "
                         "(chat) model")
    return tokenizer


def _render_until_user_text(tokenizer, messages):
    """(text before the sentinel user message, text after it)."""
    text = tokenizer.apply_chat_template(messages + [{"role": "user", "content": SENTINEL}],
                                         add_generation_prompt=False, tokenize=False)
    if text.count(SENTINEL) != 1:
        raise ValueError("the tokenizer's chat template does not render a user message's text "
                         "verbatim once, so the pre-query template cannot be cut from it")
    before, after = text.split(SENTINEL)
    return before, after


def pre_query_template(tokenizer, system=None, history=()):
    """The chat template rendered up to where the (next) user text starts:
    a conversation (the system message, if any, and `history`, a list of
    {"role", "content"} messages) plus a sentinel user message, cut before
    the sentinel. E.g. Llama-3's
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\n"."""
    check_chat_tokenizer("tokenizer", tokenizer)
    messages = [] if system is None else [{"role": "system",
                                           "content": checks.text("system", system)}]
    return _render_until_user_text(tokenizer, messages + list(history))[0]


def end_of_turn_ids(tokenizer, model=None):
    """Token ids that end a turn: the tokenizer's eos, the model's
    generation_config eos ids, and the first token the template puts right
    after a user's text when it is a special token (Llama-3's <|eot_id|>,
    Qwen's <|im_end|>)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if model is not None and model.generation_config is not None:
        configured = model.generation_config.get("eos_token_id")
        ids += configured if isinstance(configured, list) else \
            ([configured] if configured is not None else [])
    after = _render_until_user_text(tokenizer, [])[1]
    closing = tokenizer.encode(after, add_special_tokens=False) if after else []
    if closing and tokenizer.decode(closing[:1], skip_special_tokens=True) == "":
        ids.append(closing[0])
    return sorted(set(int(i) for i in ids))


def newline_token_ids(tokenizer, vocab_size):
    """The ids of every token whose text holds a newline (early stopping)."""
    return [i for i in range(vocab_size) if "\n" in tokenizer.decode([i])]


def _cut_instruction(text, early_stopping):
    if early_stopping:
        text = text.split("\n", 1)[0]
    return text.strip()


def _progress(total, desc, show):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, dynamic_ncols=True)


def _generate_batches(model, prompts, show_progress, desc, batch_size, seed, max_new_tokens,
                      **settings):
    """Model.generate over prompts in batches of batch_size (batch b seeded
    seed + b), each batch's max_new_tokens cut to the room its longest
    prompt leaves in the model's positions."""
    bar = _progress(len(prompts), desc, show_progress)
    outputs = []
    try:
        for b, start in enumerate(range(0, len(prompts), batch_size)):
            batch = prompts[start:start + batch_size]
            room = model.max_positions - max(len(p) for p in batch)
            outputs += model.generate(batch, max_new_tokens=min(max_new_tokens, room),
                                      seed=seed + b, **settings)
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    return outputs


def _check_common(model, tokenizer, batch_size, seed):
    check_model("model", model)
    check_chat_tokenizer("tokenizer", tokenizer)
    return checks.integer("batch_size", batch_size, 1), checks.seed("seed", seed)


def _instructions(model, tokenizer, prefixes, samples_per_prefix, *, max_new_tokens,
                  temperature, top_p, early_stopping, batch_size, seed, show_progress, desc):
    """Sampled instruction texts: samples_per_prefix per pre-query prefix
    (text), the samples of one prefix sharing its cache."""
    stop = end_of_turn_ids(tokenizer, model)
    if early_stopping:
        stop = sorted(set(stop) | set(newline_token_ids(tokenizer, model.vocab_size)))
    prompts = [tokenizer.encode(p, add_special_tokens=False) for p in prefixes]
    for p in prompts:
        checks.require(0 < len(p) < model.max_positions, "pre-query template", len(p),
                       f"between 1 and {model.max_positions - 1} tokens (the model's positions)")
    settings = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                    repetition_penalty=1.0, eos_token_id=stop)
    if len(prompts) > 1:  # one sample per prefix (the conversations of later turns)
        checks.require(samples_per_prefix == 1, "samples_per_prefix", samples_per_prefix,
                       "1 when there are several prefixes")
        outputs = _generate_batches(model, prompts, show_progress, desc, batch_size, seed,
                                    max_new_tokens, **settings)
    else:  # one prefix: batch_size samples a call, sharing its cache
        bar = _progress(samples_per_prefix, desc, show_progress)
        room = model.max_positions - len(prompts[0])
        outputs = []
        try:
            for b, start in enumerate(range(0, samples_per_prefix, batch_size)):
                count = min(batch_size, samples_per_prefix - start)
                outputs += model.generate(prompts[0], max_new_tokens=min(max_new_tokens, room),
                                          num_return_sequences=count, seed=seed + b,
                                          **settings)
                if bar is not None:
                    bar.update(count)
        finally:
            if bar is not None:
                bar.close()
    return [_cut_instruction(tokenizer.decode(o, skip_special_tokens=True), early_stopping)
            for o in outputs]


def _response_prompts(tokenizer, conversations):
    return [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True)
            for c in conversations]


def responses(model, tokenizer, conversations, *, max_new_tokens=256, batch_size=50, seed=0,
              show_progress=False):
    """The model's greedy answer (magpie.sh res_temp=0) to each conversation
    (a list of messages ending with the user's), through the chat template,
    stopping at the end of turn. Returns the answer texts."""
    batch_size, seed = _check_common(model, tokenizer, batch_size, seed)
    max_new_tokens = checks.integer("max_new_tokens", max_new_tokens, 1)
    prompts = _response_prompts(tokenizer, conversations)
    # a conversation that fills the model's positions gets no answer (""),
    # which the length filter drops
    fits = [i for i, p in enumerate(prompts) if len(p) < model.max_positions]
    outputs = [[] for _ in prompts]
    if fits:
        answered = _generate_batches(model, [prompts[i] for i in fits], show_progress,
                                     "responses", batch_size, seed, max_new_tokens,
                                     do_sample=False, repetition_penalty=1.0,
                                     eos_token_id=end_of_turn_ids(tokenizer, model))
        for i, o in zip(fits, answered):
            outputs[i] = o
    return [tokenizer.decode(o, skip_special_tokens=True).strip() for o in outputs]


def sample_instructions(model, tokenizer, n, *, system=None, max_new_tokens=64,
                        temperature=1.0, top_p=1.0, early_stopping=True, batch_size=50, seed=0,
                        show_progress=False):
    """n instructions sampled from the pre-query template (temperature 1 and
    top_p 1 by default, as the paper), batch_size a call sharing the
    template's cache; the texts are cut at the first newline with
    early_stopping and stripped (an instruction may come out empty: the
    length filter drops it)."""
    batch_size, seed = _check_common(model, tokenizer, batch_size, seed)
    n = checks.integer("n", n, 1)
    return _instructions(model, tokenizer, [pre_query_template(tokenizer, system)], n,
                         **_sampling(max_new_tokens, temperature, top_p, early_stopping),
                         batch_size=batch_size, seed=seed, show_progress=show_progress,
                         desc="instructions")


def _sampling(max_new_tokens, temperature, top_p, early_stopping):
    return dict(max_new_tokens=checks.integer("max_new_tokens", max_new_tokens, 1),
                temperature=checks.real("temperature", temperature, 0.0, open_low=True),
                top_p=checks.real("top_p", top_p, 0.0, 1.0, open_low=True),
                early_stopping=checks.flag("early_stopping", early_stopping))


# ---- filters --------------------------------------------------------------------------------

def word_ngrams(text, n):
    """The set of word n-grams of a text (lowercased; a text of fewer words
    is one gram)."""
    words = text.lower().split()
    if len(words) < n:
        return {tuple(words)}
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def repetition(text, n=3):
    """The fraction of a text's word n-grams that repeat an earlier one."""
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


FILTER_NAMES = ("short_instruction", "long_instruction", "colon_ending", "short_response",
                "long_response", "repetitive_response", "duplicate")


def filter_conversations(conversations, *, min_instruction_chars=1, max_instruction_chars=None,
                         min_response_chars=1, max_response_chars=None, max_repetition=None,
                         repetition_ngram=3, drop_colon_endings=True, dedup_threshold=0.9,
                         dedup_ngram=3):
    """Magpie's filters, each an option (None turns a bound off):
    instruction and response lengths in characters (every turn), the
    fraction of repeated word n-grams in a response (max_repetition), an
    instruction ending with ':' (data_filter.ipynb), and near duplicates: a
    conversation whose first instruction's word-n-gram Jaccard similarity
    to an earlier kept one is >= dedup_threshold is dropped (the paper keeps
    the first of embedding neighbours; None: no deduplication).

    Returns (kept conversations, {filter name: conversations it dropped}),
    each dropped conversation counted under the first filter it fails."""
    min_instruction_chars = checks.integer("min_instruction_chars", min_instruction_chars, 0)
    max_instruction_chars = checks.integer("max_instruction_chars", max_instruction_chars, 1,
                                           allow_none=True)
    min_response_chars = checks.integer("min_response_chars", min_response_chars, 0)
    max_response_chars = checks.integer("max_response_chars", max_response_chars, 1,
                                        allow_none=True)
    max_repetition = checks.real("max_repetition", max_repetition, 0.0, 1.0, allow_none=True)
    repetition_ngram = checks.integer("repetition_ngram", repetition_ngram, 1)
    drop_colon_endings = checks.flag("drop_colon_endings", drop_colon_endings)
    dedup_threshold = checks.real("dedup_threshold", dedup_threshold, 0.0, 1.0, open_low=True,
                                  allow_none=True)
    dedup_ngram = checks.integer("dedup_ngram", dedup_ngram, 1)
    dropped = dict.fromkeys(FILTER_NAMES, 0)
    kept, kept_grams, index = [], [], {}

    def failed(conversation):
        users = [m["content"] for m in conversation if m["role"] == "user"]
        answers = [m["content"] for m in conversation if m["role"] == "assistant"]
        if any(len(u) < min_instruction_chars or not u for u in users):
            return "short_instruction"
        if max_instruction_chars is not None and any(len(u) > max_instruction_chars
                                                     for u in users):
            return "long_instruction"
        if drop_colon_endings and any(u.endswith(":") for u in users):
            return "colon_ending"
        if any(len(a) < min_response_chars or not a for a in answers):
            return "short_response"
        if max_response_chars is not None and any(len(a) > max_response_chars for a in answers):
            return "long_response"
        if max_repetition is not None and any(repetition(a, repetition_ngram) > max_repetition
                                              for a in answers):
            return "repetitive_response"
        return None

    for conversation in conversations:
        reason = failed(conversation)
        grams = None
        if reason is None and dedup_threshold is not None:
            grams = word_ngrams(conversation[0]["content"] if conversation[0]["role"] == "user"
                                else conversation[1]["content"], dedup_ngram)
            candidates = {k for g in grams for k in index.get(g, ())}
            if any(len(grams & kept_grams[k]) / len(grams | kept_grams[k]) >= dedup_threshold
                   for k in candidates):
                reason = "duplicate"
        if reason is not None:
            dropped[reason] += 1
            continue
        if grams is not None:
            for g in grams:
                index.setdefault(g, []).append(len(kept_grams))
            kept_grams.append(grams)
        kept.append(conversation)
    return kept, dropped


# ---- the pipeline ---------------------------------------------------------------------------

def magpie(model, tokenizer, n, *, turns=1, system=None, max_instruction_tokens=64,
           max_response_tokens=256, temperature=1.0, top_p=1.0, early_stopping=True,
           batch_size=50, seed=0, show_progress=False, **filters):
    """Magpie SFT data: n conversations of `turns` user/assistant turns, the
    instructions sampled from the pre-query template (a system message, if
    given, steers them; it is not put in the records), the answers greedy;
    then filter_conversations(**filters).

    Returns (records, summary): records {"messages": [...]} in TRL's
    conversational format; summary {"sampled", "kept", "dropped": {filter:
    count}, "stops": how instructions were stopped}."""
    batch_size, seed = _check_common(model, tokenizer, batch_size, seed)
    n = checks.integer("n", n, 1)
    turns = checks.integer("turns", turns, 1)
    sampling = _sampling(max_instruction_tokens, temperature, top_p, early_stopping)
    max_response_tokens = checks.integer("max_response_tokens", max_response_tokens, 1)
    filter_conversations([], **filters)  # bad filter options fail before any sampling
    head = [] if system is None else [{"role": "system", "content": checks.text("system",
                                                                               system)}]
    conversations = [[] for _ in range(n)]
    for turn in range(turns):
        if turn == 0:
            instructions = _instructions(model, tokenizer, [pre_query_template(tokenizer, system)],
                                         n, **sampling, batch_size=batch_size, seed=seed,
                                         show_progress=show_progress, desc="instructions")
        else:
            prefixes = [_render_until_user_text(tokenizer, head + c)[0] for c in conversations]
            instructions = _instructions(model, tokenizer, prefixes, 1, **sampling,
                                         batch_size=batch_size, seed=seed + 7919 * turn,
                                         show_progress=show_progress,
                                         desc=f"instructions (turn {turn + 1})")
        for c, text in zip(conversations, instructions):
            c.append({"role": "user", "content": text})
        answers = responses(model, tokenizer, [head + c for c in conversations],
                            max_new_tokens=max_response_tokens, batch_size=batch_size,
                            seed=seed, show_progress=show_progress)
        for c, text in zip(conversations, answers):
            c.append({"role": "assistant", "content": text})
    kept, dropped = filter_conversations(conversations, **filters)
    stops = "end of turn" + (" or first newline" if sampling["early_stopping"] else "")
    return [{"messages": c} for c in kept], {"sampled": n, "kept": len(kept),
                                             "dropped": dropped, "stops": stops}


def _scores(scorer, tokenizer, instruction, prompt_ids, completions):
    from calign.model import RewardModel

    if isinstance(scorer, RewardModel):
        return [float(x) for x in scorer.score(completions,
                                               prompts=[prompt_ids] * len(completions))]
    return [scorer_value(scorer(instruction,
                                tokenizer.decode(c, skip_special_tokens=True).strip()))
            for c in completions]


def preference_pairs(model, tokenizer, instructions, scorer, *, k=5, temperature=0.8, top_p=1.0,
                     max_new_tokens=256, batch_size=8, seed=0, show_progress=False):
    """Magpie's DPO pairs (gen_po_multi_res.py, process_po.ipynb): k
    responses per instruction sampled at temperature 0.8, top_p 1; each
    scored by scorer, a calign.RewardModel (on the templated prompt and the
    sampled tokens, with the model's tokenizer) or a callable(instruction,
    response) -> float; chosen = the highest score, rejected = the lowest.
    Instructions whose k scores are all equal give no pair.

    Returns (records, summary): records in TRL's conversational preference
    format {"prompt": [user message], "chosen": [assistant message],
    "rejected": [...], "score_chosen", "score_rejected"}; summary
    {"instructions", "pairs", "ties"}."""
    batch_size, seed = _check_common(model, tokenizer, batch_size, seed)
    check_scorer("scorer", scorer)
    k = checks.integer("k", k, 2)
    max_new_tokens = checks.integer("max_new_tokens", max_new_tokens, 1)
    temperature = checks.real("temperature", temperature, 0.0, open_low=True)
    top_p = checks.real("top_p", top_p, 0.0, 1.0, open_low=True)
    if isinstance(instructions, (str, bytes)) or not isinstance(instructions, (list, tuple)):
        raise TypeError(f"instructions must be a list of strings, not "
                        f"{type(instructions).__name__}")
    if not instructions:
        raise ValueError("instructions is empty")
    for i, text in enumerate(instructions):
        checks.text(f"instructions[{i}]", text)
    prompts = _response_prompts(tokenizer, [[{"role": "user", "content": t}]
                                            for t in instructions])
    eos = end_of_turn_ids(tokenizer, model)
    bar = _progress(len(prompts), "preference pairs", show_progress)
    records, ties = [], 0
    try:
        for i, (text, prompt) in enumerate(zip(instructions, prompts)):
            room = model.max_positions - len(prompt)
            checks.require(room >= 1, f"instructions[{i}]", text,
                           "short enough for its templated prompt to fit the model")
            samples = model.generate(prompt, max_new_tokens=min(max_new_tokens, room),
                                     do_sample=True, temperature=temperature, top_p=top_p,
                                     top_k=0, repetition_penalty=1.0, eos_token_id=eos,
                                     num_return_sequences=k, seed=seed + i)
            scores = _scores(scorer, tokenizer, text, prompt, samples)
            best, worst = int(np.argmax(scores)), int(np.argmin(scores))
            if bar is not None:
                bar.update(1)
            if scores[best] == scores[worst]:
                ties += 1
                continue
            answer = [tokenizer.decode(s, skip_special_tokens=True).strip() for s in samples]
            records.append({"prompt": [{"role": "user", "content": text}],
                            "chosen": [{"role": "assistant", "content": answer[best]}],
                            "rejected": [{"role": "assistant", "content": answer[worst]}],
                            "score_chosen": scores[best], "score_rejected": scores[worst]})
    finally:
        if bar is not None:
            bar.close()
    return records, {"instructions": len(instructions), "pairs": len(records), "ties": ties}


def write_jsonl(path, records):
    """Writes records one JSON object a line, through a temporary file
    renamed into place (no half-written file)."""
    import json

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"the folder of {path!r} does not exist")
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(partial, path)
