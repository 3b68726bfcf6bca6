"""What a checkpoint folder holds and whether calign can run it, read from its
config.json and the safetensors headers alone: no weight is read
(`calign info --model PATH`)."""

import collections
import os

from calign.model.checkpoint import check_tensors, read_tensors
from calign.model.config import engine_config, load_config_file
from calign.model.dtypes import TORCH_NAMES
from calign.model.generation import read_generation_config


def describe_checkpoint(path):
    """A dict describing the checkpoint folder `path`:

    family (model_type), architectures, reward_model (a ...ForSequenceClassification),
    parameters (elements of the tensors calign would load), tensors (their
    number), dtypes ({torch name or safetensors code: tensors}), vocab_size,
    max_positions, tied_embeddings (None where the config does not say),
    chat_template (True/False, None without tokenizer.json), generation_config
    (a generation_config.json is present), runnable and, when it is not,
    reason (the refusal calign would raise, naming the field or tensor).

    A missing or unreadable config.json or weights file raises as loading would."""
    config = load_config_file(path)
    tensors = read_tensors(path)
    architectures = config.get("architectures") or []
    reward_model = any(a.endswith("ForSequenceClassification") for a in architectures)
    summary = dict(path=path, family=config.get("model_type"), architectures=architectures,
                   reward_model=reward_model, vocab_size=config.get("vocab_size"),
                   max_positions=config.get("max_position_embeddings", config.get("n_positions")),
                   tied_embeddings=config.get("tie_word_embeddings"),
                   chat_template=_has_chat_template(path),
                   generation_config=os.path.isfile(os.path.join(path, "generation_config.json")),
                   runnable=True, reason=None)
    ignored = ()
    try:
        engine = engine_config(config)
        summary.update(vocab_size=engine["vocab"], max_positions=engine["max_positions"],
                       tied_embeddings=bool(engine["tied_embeddings"]))
        ignored = ("lm_head.weight",) if engine["tied_embeddings"] or reward_model else ()
        check_tensors(tensors, _expected_shapes(config, reward_model), ignored)
        read_generation_config(path)
    except ValueError as exc:  # ConfigError, CheckpointError or a bad generation_config.json
        summary.update(runnable=False, reason=str(exc))
    counted = [name for name in tensors if name not in ignored]
    summary["parameters"] = sum(_elements(tensors.shape(name)) for name in counted)
    summary["tensors"] = len(counted)
    summary["dtypes"] = dict(collections.Counter(
        TORCH_NAMES.get(tensors.dtype(name), tensors.dtype(name)) for name in counted))
    return summary


def summary_lines(summary):
    """describe_checkpoint's dict as the lines `calign info --model` prints."""
    def yes_no(value):
        return "not given" if value is None else "yes" if value else "no"

    kind = ", ".join(summary["architectures"]) + (", a reward model" if summary["reward_model"]
                                                  else "")
    dtypes = summary["dtypes"]
    dtype_text = next(iter(dtypes)) if len(dtypes) == 1 else ", ".join(
        f"{name} ({count} tensor{'s' if count > 1 else ''})"
        for name, count in sorted(dtypes.items()))
    chat = summary["chat_template"]
    return [
        f"checkpoint: {summary['path']}",
        f"family: {summary['family'] or 'not given'}" + (f" ({kind})" if kind else ""),
        f"parameters: {summary['parameters']:,} in {summary['tensors']} tensors",
        f"dtype{'s' if len(dtypes) > 1 else ''}: {dtype_text}",
        f"vocabulary: {summary['vocab_size']}",
        f"max positions: {summary['max_positions']}",
        f"tied embeddings: {yes_no(summary['tied_embeddings'])}",
        f"chat template: {'no tokenizer.json' if chat is None else yes_no(chat)}",
        f"generation_config.json: {yes_no(summary['generation_config'])}",
        "runs in calign: " + ("yes" if summary["runnable"] else f"no: {summary['reason']}"),
    ]


def _expected_shapes(config, reward_model):
    """{name: shape} of the tensors calign's model for `config` holds. The
    model's parameter buffers are allocated zeroed and never written, so the
    operating system gives them no memory."""
    from calign.model.model import Model
    from calign.model.reward_model import RewardModel

    model = (RewardModel if reward_model else Model)(config)
    return {name: view.shape for name, view in model.state_dict().items()}


def _elements(shape):
    count = 1
    for size in shape:
        count *= size
    return count


def _has_chat_template(path):
    """Whether the folder's tokenizer has a chat template, as calign.Tokenizer
    reads it (None: there is no tokenizer.json)."""
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        return None
    from calign.tokenizer import Tokenizer

    return bool(Tokenizer.from_pretrained(path).chat_template)
