"""Choosing tokens from logits, and decoding on a Session until a stop string.

Model.generate runs its whole loop in C but can only stop at token ids; the
decode-time methods also stop at text ("# Query" for URIAL) and choose among
few candidates (RAIN). Here each step is one Session.append (C) and one
choice in NumPy, with transformers' order of processing: repetition penalty,
temperature, top-k, top-p, then a draw from a numpy Generator (or the argmax).
"""

import numpy as np

from calign import checks
from calign.decoding.session import Session
from calign.model.generation import eos_token_ids


def sampling_settings(do_sample=False, temperature=1.0, top_k=0, top_p=1.0,
                      repetition_penalty=1.0):
    """The settings of choose_token, checked under their names."""
    return dict(do_sample=checks.flag("do_sample", do_sample),
                temperature=checks.real("temperature", temperature, 0.0, open_low=True),
                top_k=checks.integer("top_k", top_k, 0, checks.C_INT_MAX),
                top_p=checks.real("top_p", top_p, 0.0, 1.0, open_low=True),
                repetition_penalty=checks.real("repetition_penalty", repetition_penalty, 0.0,
                                               open_low=True))


def filtered_log_probs(logits, temperature=1.0, top_k=0, top_p=1.0):
    """log softmax(logits / temperature) float64 over the tokens top_k and
    top_p keep (-inf elsewhere), as transformers' warpers filter them (ties
    with the k-th largest kept)."""
    scaled = np.asarray(logits, np.float64) / temperature
    if not np.all(np.isfinite(scaled)):
        raise FloatingPointError("the logits are not finite (NaN or infinity)")
    if 0 < top_k < scaled.size:
        kth = np.partition(scaled, -top_k)[-top_k]
        scaled = np.where(scaled >= kth, scaled, -np.inf)
    log_probs = scaled - np.logaddexp.reduce(scaled)
    if top_p < 1.0:
        order = np.argsort(-log_probs, kind="stable")
        # keep a token while the mass ranked above it is below top_p
        mass_above = np.cumsum(np.exp(log_probs[order])) - np.exp(log_probs[order])
        dropped = order[mass_above >= top_p]
        log_probs[dropped] = -np.inf
        log_probs -= np.logaddexp.reduce(log_probs)
    return log_probs


def choose_token(logits, settings, rng, seen=None):
    """The next token: the argmax, or a draw from `rng` (a numpy Generator)
    after the penalty on the ids in `seen` and the filters of `settings`
    (sampling_settings)."""
    logits = np.asarray(logits, np.float64)
    penalty = settings["repetition_penalty"]
    if penalty != 1.0 and seen:
        ids = np.fromiter(seen, np.int64)
        logits = logits.copy()
        logits[ids] = np.where(logits[ids] > 0, logits[ids] / penalty, logits[ids] * penalty)
    if not settings["do_sample"]:
        if not np.all(np.isfinite(logits)):
            raise FloatingPointError("the logits are not finite (NaN or infinity)")
        return int(np.argmax(logits))
    probs = np.exp(filtered_log_probs(logits, settings["temperature"], settings["top_k"],
                                      settings["top_p"]))
    return int(rng.choice(probs.size, p=probs / probs.sum()))


def first_stop(text, stop):
    """The index in `text` where the earliest of the stop strings begins, or None."""
    found = [text.find(s) for s in stop if s in text]
    return min(found) if found else None


def decode_until(model, tokenizer, prompt_ids, *, stop=(), max_new_tokens=256,
                 eos_token_id=None, seed=None, **sampling):
    """Decodes after prompt_ids (prefilled once on a Session) one token at a
    time until the decoded text (special tokens skipped) holds one of the
    `stop` strings, an eos token comes, or max_new_tokens tokens are made.

    Returns (token ids made, their text cut before the stop string, why it
    ended: "stop", "eos" or "length")."""
    stop = [checks.text(f"stop[{i}]", s) for i, s in enumerate(
        [stop] if isinstance(stop, str) else stop)]
    settings = sampling_settings(**sampling)
    eos = set(eos_token_ids("eos_token_id", eos_token_id))
    prompt_ids = [int(t) for t in prompt_ids]
    checks.require(len(prompt_ids) > 0, "prompt_ids", prompt_ids, "a non-empty list of token ids")
    room = model.max_positions - len(prompt_ids)
    max_new_tokens = checks.integer(
        "max_new_tokens", max_new_tokens, 1, max(room, 1),
        what=f"an integer in [1, {room}] (the positions the model has after the "
             f"{len(prompt_ids)}-token prompt)")
    rng = np.random.default_rng(checks.seed("seed", seed, allow_none=True))
    session = Session(model, n_slots=1, capacity=len(prompt_ids) + max_new_tokens)
    logits = session.append(0, prompt_ids)
    seen, made = set(prompt_ids), []
    while True:
        token = choose_token(logits, settings, rng, seen)
        made.append(token)
        seen.add(token)
        text = tokenizer.decode(made, skip_special_tokens=True)
        cut = first_stop(text, stop)
        if cut is not None:
            return made, text[:cut], "stop"
        if token in eos:
            return made, text, "eos"
        if len(made) == max_new_tokens:
            return made, text, "length"
        logits = session.append(0, [token])
