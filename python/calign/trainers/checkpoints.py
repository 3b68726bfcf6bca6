"""Checkpoint folders: output_dir/checkpoint-N with the model, tokenizer,
optimizer state and trainer_state.json.

Every change to a checkpoint folder is a rename, so a kill at any instant
leaves each `checkpoint-N` either complete or absent:

- a checkpoint is written in full under `.checkpoint-N.tmp-*`, trainer_state.json
  last (itself written under a temporary name and renamed), then renamed to
  `checkpoint-N`; a temporary folder holding trainer_state.json is complete;
- a folder is deleted by renaming it to `.checkpoint-N.deleting-*` first, then
  removing that, so `checkpoint-N` is never half-deleted;
- overwriting checkpoint-N renames the old folder away, renames the new one in,
  then deletes the old one; a kill between the two renames leaves no
  checkpoint-N but a complete temporary folder.

clean_interrupted(), called when a trainer starts in output_dir, finishes or
undoes what a kill left: it removes the `.deleting-` folders and unfinished
temporary folders, renames a complete temporary folder into place where its
checkpoint-N is missing, and removes the incomplete `checkpoint-N` folders an
older calign left while deleting one file after the other.
"""

import json
import os
import re
import shutil
import tempfile
import uuid
import warnings

from calign.lora.adapters import CONFIG_NAME as ADAPTER_CONFIG_NAME
from calign.lora.adapters import WEIGHTS_NAME as ADAPTER_WEIGHTS_NAME
from calign.model.checkpoint import WEIGHTS_NAME, make_readable
from calign.model.generation import GENERATION_CONFIG_NAME

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TEMP_PATTERN = re.compile(r"^\.checkpoint-(\d+)\.tmp-\w+$")
DELETING_PATTERN = re.compile(r"^\.checkpoint-(\d+)\.deleting-\w+$")
STATE_NAME = "trainer_state.json"
# The files without which a folder cannot be resumed from: the model's, or
# for a LoRA run its adapter's (PEFT's files, as TRL's checkpoints hold them).
MODEL_NAMES = (WEIGHTS_NAME, "config.json")
ADAPTER_NAMES = (ADAPTER_WEIGHTS_NAME, ADAPTER_CONFIG_NAME)
REQUIRED_NAMES = ("optimizer.safetensors", STATE_NAME)
# Everything write_checkpoint puts in a folder (ref_model: DPOTrainer's TR-DPO
# reference). An incomplete checkpoint-N holding anything else is not removed.
CHECKPOINT_NAMES = frozenset(MODEL_NAMES + ADAPTER_NAMES + REQUIRED_NAMES + (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "ref_model",
    GENERATION_CONFIG_NAME))
# metrics.jsonl is rewritten through this name after a resume (see write_text_atomically).
METRICS_TEMP_NAME = ".metrics.jsonl.tmp"


def missing_files(folder):
    """The files a resume reads that `folder` lacks (the model's or the
    adapter's, whichever it has the more of)."""
    def absent(names):
        return [name for name in names if not os.path.isfile(os.path.join(folder, name))]

    weights = min(absent(MODEL_NAMES), absent(ADAPTER_NAMES), key=len)
    return weights + absent(REQUIRED_NAMES)


def is_complete(folder):
    """True if `folder` holds every file a resume reads."""
    return not missing_files(folder)


def list_checkpoints(output_dir):
    """[(step, path)] of the complete checkpoints in output_dir, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = CHECKPOINT_PATTERN.match(name)
        path = os.path.join(output_dir, name)
        if match and is_complete(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def write_text_atomically(path, text):
    """Writes `path` under a temporary name (a dot and the name, then .tmp) and
    renames it: a reader sees the old file or the new one, never a part."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _remove(path):
    """Removes a folder (a symbolic link itself, never what it points to)."""
    if os.path.islink(path):
        os.unlink(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _deleting_name(output_dir, step):
    return os.path.join(output_dir, f".checkpoint-{step}.deleting-{uuid.uuid4().hex}")


def delete_folder(path, step):
    """Renames `path` (a checkpoint-`step` folder or one of its temporary
    folders) to a `.checkpoint-<step>.deleting-*` name, then removes it; a kill
    midway leaves a folder clean_interrupted() removes."""
    doomed = _deleting_name(os.path.dirname(path), step)
    os.rename(path, doomed)
    _remove(doomed)


def write_checkpoint(output_dir, step, model, tokenizer, optimizer, trainer_state,
                     write_extra=None):
    """Writes checkpoint-`step`; write_extra(folder) adds a trainer's own files."""
    os.makedirs(output_dir, exist_ok=True)
    final = os.path.join(output_dir, f"checkpoint-{step}")
    if os.path.lexists(final) and not os.path.isdir(final):
        raise FileExistsError(f"{final!r} exists and is not a checkpoint folder")
    tmp = tempfile.mkdtemp(prefix=f".checkpoint-{step}.tmp-", dir=output_dir)
    try:
        # float32 whatever the model was loaded in: a resume continues from
        # the master weights exactly, as if the run had not stopped
        model.save_pretrained(os.path.join(tmp, "model"), dtype="float32")
        for name in os.listdir(os.path.join(tmp, "model")):
            os.replace(os.path.join(tmp, "model", name), os.path.join(tmp, name))
        os.rmdir(os.path.join(tmp, "model"))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        optimizer.save(os.path.join(tmp, "optimizer.safetensors"))
        if write_extra is not None:
            write_extra(tmp)
        make_readable(tmp)
        # Last: its presence is what makes the temporary folder complete.
        write_text_atomically(os.path.join(tmp, STATE_NAME), json.dumps(trainer_state, indent=2))
    except BaseException:
        delete_folder(tmp, step)
        raise
    old = None
    if os.path.lexists(final):
        old = _deleting_name(output_dir, step)
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        _remove(old)
    return final


def prune_checkpoints(output_dir, limit, keep=None):
    """Deletes the oldest checkpoints beyond `limit`, never the latest nor
    `keep` (the best checkpoint's path), as transformers' rotate_checkpoints."""
    if limit is None:
        return
    checkpoints = list_checkpoints(output_dir)
    protected = {checkpoints[-1][1]} if checkpoints else set()
    if keep is not None:
        protected |= {path for _, path in checkpoints
                      if os.path.abspath(path) == os.path.abspath(keep)}
    remaining = len(checkpoints)
    for step, path in checkpoints:
        if remaining <= max(limit, len(protected)):
            break
        if path not in protected:
            delete_folder(path, step)
            remaining -= 1


def clean_interrupted(output_dir):
    """Finishes or undoes what a save or prune killed midway left in output_dir
    (see the module's docstring), touching only the names calign gives its
    folders, and warns about what it did. Call it before anything else writes
    checkpoints in output_dir."""
    if not os.path.isdir(output_dir):
        return
    leftovers, recovered, incomplete, kept = 0, [], [], []
    temps = {}  # step -> temporary folders of that step
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        if name == METRICS_TEMP_NAME and os.path.isfile(path):
            os.remove(path)
        elif DELETING_PATTERN.match(name):
            _remove(path)
            leftovers += 1
        elif os.path.islink(path) or not os.path.isdir(path):
            continue
        elif match := TEMP_PATTERN.match(name):
            temps.setdefault(int(match.group(1)), []).append(path)
        elif (match := CHECKPOINT_PATTERN.match(name)) and not is_complete(path):
            if set(os.listdir(path)) <= CHECKPOINT_NAMES:
                delete_folder(path, int(match.group(1)))
                incomplete.append(int(match.group(1)))
            else:
                kept.append(name)
    for step, paths in sorted(temps.items()):
        final = os.path.join(output_dir, f"checkpoint-{step}")
        complete = [path for path in paths if is_complete(path)]
        if complete and not os.path.lexists(final):
            # The newest, should two runs have left one each.
            newest = max(complete, key=lambda p: os.stat(os.path.join(p, STATE_NAME)).st_mtime_ns)
            os.rename(newest, final)
            paths.remove(newest)
            recovered.append(f"checkpoint-{step}")
        for path in paths:
            delete_folder(path, step)
        leftovers += len(paths)
    done = []
    if recovered:
        done.append(f"recovered {', '.join(recovered)} from its complete temporary folder")
    if incomplete:
        done.append("removed the incomplete "
                    + ", ".join(f"checkpoint-{step}" for step in sorted(incomplete)))
    if leftovers:
        done.append(f"removed {leftovers} temporary or half-deleted folder(s)")
    if done:
        warnings.warn(f"{output_dir}: cleaned what an interrupted save or prune left: "
                      + "; ".join(done), stacklevel=2)
    if kept:
        warnings.warn(f"{output_dir}: {', '.join(kept)}: not a complete checkpoint (one of "
                      f"{', '.join(MODEL_NAMES + REQUIRED_NAMES)}, or of a LoRA run's "
                      f"{', '.join(ADAPTER_NAMES)}, is missing) and holding files calign does "
                      "not write: left in place, never resumed from", stacklevel=2)


def resolve_resume(output_dir, resume_from_checkpoint):
    """The checkpoint folder to resume from, or None."""
    if resume_from_checkpoint in (None, False):
        return None
    if resume_from_checkpoint is True:
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            raise FileNotFoundError(f"resume_from_checkpoint=True but {output_dir!r} holds no "
                                    "complete checkpoint")
        return checkpoints[-1][1]
    path = os.fspath(resume_from_checkpoint)
    missing = missing_files(path)
    if missing:
        raise FileNotFoundError(f"resume_from_checkpoint {path!r} is not a complete checkpoint "
                                f"(no {', '.join(missing)})")
    return path


def read_trainer_state(path):
    with open(os.path.join(path, STATE_NAME)) as f:
        return json.load(f)
