"""Checkpoint folders: output_dir/checkpoint-N with the model, tokenizer,
optimizer state and trainer_state.json, written under a temporary name and
renamed, so an interrupted save never leaves a half checkpoint."""

import json
import os
import re
import shutil
import tempfile

from calign.model.checkpoint import make_readable

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir):
    """[(step, path)] of the complete checkpoints in output_dir, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = CHECKPOINT_PATTERN.match(name)
        path = os.path.join(output_dir, name)
        if match and os.path.isfile(os.path.join(path, "trainer_state.json")):
            found.append((int(match.group(1)), path))
    return sorted(found)


def write_checkpoint(output_dir, step, model, tokenizer, optimizer, trainer_state,
                     write_extra=None):
    """Writes checkpoint-`step`; write_extra(folder) adds a trainer's own files."""
    os.makedirs(output_dir, exist_ok=True)
    final = os.path.join(output_dir, f"checkpoint-{step}")
    tmp = tempfile.mkdtemp(prefix=f".checkpoint-{step}.tmp-", dir=output_dir)
    try:
        model.save_pretrained(os.path.join(tmp, "model"))
        for name in os.listdir(os.path.join(tmp, "model")):
            os.replace(os.path.join(tmp, "model", name), os.path.join(tmp, name))
        os.rmdir(os.path.join(tmp, "model"))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        optimizer.save(os.path.join(tmp, "optimizer.safetensors"))
        with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
            json.dump(trainer_state, f, indent=2)
        if write_extra is not None:
            write_extra(tmp)
        make_readable(tmp)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def prune_checkpoints(output_dir, limit):
    """Deletes the oldest checkpoints beyond `limit`."""
    if limit is None:
        return
    checkpoints = list_checkpoints(output_dir)
    for _, path in checkpoints[:max(0, len(checkpoints) - limit)]:
        shutil.rmtree(path, ignore_errors=True)


def resolve_resume(output_dir, resume_from_checkpoint):
    """The checkpoint folder to resume from, or None."""
    if resume_from_checkpoint in (None, False):
        return None
    if resume_from_checkpoint is True:
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            raise FileNotFoundError(f"resume_from_checkpoint=True but {output_dir!r} holds no "
                                    "checkpoint")
        return checkpoints[-1][1]
    path = os.fspath(resume_from_checkpoint)
    if not os.path.isfile(os.path.join(path, "trainer_state.json")):
        raise FileNotFoundError(f"{path!r} is not a checkpoint (no trainer_state.json)")
    return path


def read_trainer_state(path):
    with open(os.path.join(path, "trainer_state.json")) as f:
        return json.load(f)
