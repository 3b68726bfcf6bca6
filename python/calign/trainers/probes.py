"""A learning-dynamics probe (Ren & Sutherland, "Learning Dynamics of LLM
Finetuning", ICLR 2025): every N optimizer steps, the sequence
log-probability log pi(y | x) of fixed responses on a fixed probe set --
the chosen, the rejected, the model's own greedy answer at that step, and
any rephrasings given -- logged into the trainer's log (metrics.jsonl), so
that DPO's "squeezing effect" (the chosen and the rejected both falling
while mass moves to the already-likely greedy answer) can be seen.

    probe = LearningDynamicsProbe(probe_records, every=10)
    trainer.add_callback(probe)
    trainer.train()
    plot_learning_dynamics(trainer.state.log_history, "dynamics.png")

The responses are tokenized as the preference trainers tokenize them
(calign.data.preference.tokenize_record: the chat template for
conversational records, eos appended to text completions).
"""

import numpy as np

from calign import checks
from calign.data import load_records
from calign.data.preference import tokenize_record
from calign.model import pack_shared_prefix

PREFIX = "probe/"


class LearningDynamicsProbe:
    """Logs probe/logps_chosen, probe/logps_rejected, probe/logps_greedy,
    probe/logps_<name> for each rephrasing and probe/greedy_is_chosen (the
    fraction of prompts whose greedy answer is the chosen one), each the
    mean over the probe set of the sequence log-probability (the sum of the
    response's token log-probs), at step 0 and every `every` steps.

    Args:
        probe_set: preference records (prompt/chosen/rejected as text or
            messages, or *_input_ids), each optionally with "rephrases":
            {name: a text or a list of texts} (the same names in every
            record; a list is averaged per record).
        every: log every this many optimizer steps.
        tokenizer: for text records (default: the trainer's
            processing_class at the first measurement).
        max_new_tokens: the greedy answer's length at most (it stops at eos).
        batch_size: prompts per forward.
    """

    def __init__(self, probe_set, every=10, tokenizer=None, max_new_tokens=32, batch_size=16):
        self.records = load_records(probe_set, "probe_set")
        self.every = checks.integer("every", every, 1)
        self.tokenizer = tokenizer
        self.max_new_tokens = checks.integer("max_new_tokens", max_new_tokens, 1)
        self.batch_size = checks.integer("batch_size", batch_size, 1)
        names = None
        for index, record in enumerate(self.records):
            rephrases = record.get("rephrases", {})
            checks.require(isinstance(rephrases, dict) and all(
                isinstance(v, str) or (isinstance(v, list) and v and
                                       all(isinstance(t, str) for t in v))
                for v in rephrases.values()), f"probe_set record {index}: rephrases",
                rephrases, "a dict of name: text or non-empty list of texts")
            checks.require(names is None or set(rephrases) == names,
                           f"probe_set record {index}: rephrases", sorted(rephrases),
                           f"the names of record 0's rephrases {sorted(names or ())}")
            names = set(rephrases)
        self.rephrase_names = sorted(names)
        self.examples = None

    def _prepare(self, tokenizer):
        """(prompt ids, [chosen, rejected, *rephrase ids], [count per name])
        per record."""
        examples = []
        for index, record in enumerate(self.records):
            prompt, (chosen, rejected) = tokenize_record(record, index, tokenizer, "probe_set")
            responses, counts = [chosen, rejected], []
            for name in self.rephrase_names:
                texts = record["rephrases"][name]
                texts = [texts] if isinstance(texts, str) else texts
                for text in texts:
                    _, (ids, _) = tokenize_record(
                        dict(record, chosen=text, rejected=text), index, tokenizer, "probe_set")
                    responses.append(ids)
                counts.append(len(texts))
            examples.append((prompt, responses, counts))
        return examples

    def measure(self, model, tokenizer=None):
        """The probe's numbers for `model` now (a dict, PREFIX-ed names)."""
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if self.examples is None:
            self.examples = self._prepare(tokenizer)
        eos = tokenizer.eos_token_id if tokenizer is not None else (
            (model.generation_config or {}).get("eos_token_id"))
        sums = {name: [] for name in ["chosen", "rejected", "greedy"] + self.rephrase_names}
        same = []
        for start in range(0, len(self.examples), self.batch_size):
            batch = self.examples[start:start + self.batch_size]
            room = model.max_positions - max(len(p) for p, _, _ in batch)
            checks.require(room >= 1, "probe_set", f"prompts of {model.max_positions}+ tokens",
                           "prompts shorter than the model's maximum positions")
            greedy = model.generate([p for p, _, _ in batch], do_sample=False,
                                    max_new_tokens=min(self.max_new_tokens, room),
                                    eos_token_id=eos, repetition_penalty=1.0)
            packed = pack_shared_prefix([(p, responses + [g]) for (p, responses, _), g
                                         in zip(batch, greedy)])
            logps = model.packed_token_logprobs(packed)
            for (_, responses, counts), slices, g in zip(batch, packed.completion_slices,
                                                          greedy):
                totals = [float(logps[s].sum(dtype=np.float64)) for s in slices]
                sums["chosen"].append(totals[0])
                sums["rejected"].append(totals[1])
                sums["greedy"].append(totals[-1])
                at = 2
                for name, count in zip(self.rephrase_names, counts):
                    sums[name].append(float(np.mean(totals[at:at + count])))
                    at += count
                same.append(list(g) == list(responses[0]))
        out = {f"{PREFIX}logps_{name}": float(np.mean(v)) for name, v in sums.items()}
        out[f"{PREFIX}greedy_is_chosen"] = float(np.mean(same))
        return out

    def on_train_begin(self, trainer):
        if trainer.state.global_step == 0:
            return self.measure(trainer.model, self.tokenizer or trainer.processing_class)
        return None

    def on_step_end(self, trainer):
        if trainer.state.global_step % self.every == 0:
            return self.measure(trainer.model, self.tokenizer or trainer.processing_class)
        return None


def plot_learning_dynamics(history, path, title="learning dynamics on the probe set"):
    """Plots every probe/logps_* series of a trainer's log against the step
    into `path` (a PNG). history: trainer.state.log_history, or the path of a
    metrics.jsonl."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(history, str):
        with open(history) as f:
            history = [json.loads(line) for line in f if line.strip()]
    entries = [h for h in history if any(k.startswith(PREFIX + "logps_") for k in h)]
    if not entries:
        raise ValueError("history holds no probe/logps_* entry: was a LearningDynamicsProbe "
                         "added to the trainer (trainer.add_callback)?")
    names = sorted({k for h in entries for k in h if k.startswith(PREFIX + "logps_")})
    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    for name in names:
        points = [(h["step"], h[name]) for h in entries if name in h]
        axis.plot([p[0] for p in points], [p[1] for p in points], marker=".",
                  label=name[len(PREFIX) + len("logps_"):])
    axis.set(title=title, xlabel="step", ylabel="mean log p(response | prompt)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
