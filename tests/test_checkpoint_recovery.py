"""What a kill during a checkpoint save or prune leaves in output_dir, and what
the next start makes of it (issue 22, "Checkpoints after a kill").

The killed runs are child processes that SIGKILL themselves just before their
k-th file-system change (rename, replace, unlink, remove, rmdir, rmtree): the
same instant on every run, no timing involved. A first, unkilled child records
the sequence of changes, labelled with the checkpoints function making them and
the training step, and the tests kill at each change of the save or prune under
test (see kill_points). The parent then checks the folder and resumes, and the resumed run must
end bit for bit where an uninterrupted run ends.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

import calign
from calign.testing import num_threads
from calign.trainers import checkpoints

VOCAB = 37
DATA = [{"input_ids": ids.tolist()} for ids in (
    np.random.default_rng(0).integers(1, VOCAB, n) for n in (3, 8, 5, 4, 7, 6, 3, 5))]
SETTINGS = dict(max_steps=6, logging_steps=1, per_device_train_batch_size=2, shuffle=True,
                learning_rate=5e-3, warmup_steps=2, disable_tqdm=True)

# The child: patches the file-system changes to count (and label) them, dies at
# the kill_at-th (0: never) and prints what it recorded.
CHILD = """
import json, os, shutil, signal, sys
import calign

spec = json.loads(sys.argv[1])
calign.set_num_threads(1)
trainer = calign.SFTTrainer(spec["model"], args=calign.SFTConfig(**spec["args"]),
                            train_dataset=spec["data"])
changes = []

def label():
    frame, caller = sys._getframe(2), None
    while frame is not None:
        if frame.f_globals.get("__name__") == "calign.trainers.checkpoints":
            caller = frame.f_code.co_name
        frame = frame.f_back
    return caller

def counted(module, name):
    real = getattr(module, name)
    def change(*args, **kwargs):
        changes.append([label(), trainer.state.global_step, name, os.fspath(args[0])])
        if len(changes) == spec["kill_at"]:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    setattr(module, name, change)

for name in ("rename", "replace", "unlink", "remove", "rmdir"):
    counted(os, name)
counted(shutil, "rmtree")
trainer.train(resume_from_checkpoint=spec["resume"])
print(json.dumps(changes))
"""


def run_child(model, output_dir, args, resume=None, kill_at=0):
    """Trains in a child process killed at its kill_at-th change (0: not
    killed); returns the changes it made (None if killed)."""
    spec = dict(model=model, args=dict(SETTINGS, output_dir=str(output_dir), **args), data=DATA,
                resume=resume, kill_at=kill_at)
    root = os.path.dirname(os.path.dirname(calign.__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], env=env,
                          capture_output=True, text=True, timeout=300)
    if kill_at:
        assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
        return None
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def kill_points(changes, function, step):
    """The 1-based indices of the changes `function` made at `step`, but of a
    run of unlinks (rmtree deleting file after file) only the first: the kills
    before it and before the rmdir after the run stand for the others."""
    points = [k for k, (caller, at, name, _) in enumerate(changes, 1)
              if caller == function and at == step
              and not (name == "unlink" and changes[k - 2][2] == "unlink")]
    assert points, f"no change by {function} at step {step}"
    return points


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The children run on one thread; so do the runs they are compared with
    (bit-identical results need the same reduction order)."""
    with num_threads(1):
        yield


@pytest.fixture(scope="module")
def llama_dir(tiny_model):
    return str(tiny_model("llama", hidden_size=24, num_hidden_layers=2, num_attention_heads=6,
                          num_key_value_heads=2, head_dim=6, intermediate_size=40,
                          vocab_size=VOCAB, pad_token_id=0))


def train(model, output_dir, resume=None, **args):
    trainer = calign.SFTTrainer(model, args=calign.SFTConfig(
        output_dir=str(output_dir), **dict(SETTINGS, **args)), train_dataset=DATA)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # what the start cleaned (the tests look at the folder)
        trainer.train(resume_from_checkpoint=resume)
    return trainer


@pytest.fixture(scope="module")
def uninterrupted(llama_dir, tmp_path_factory):
    """The reference: one run saving every step, nothing pruned."""
    path = tmp_path_factory.mktemp("uninterrupted")
    trainer = train(llama_dir, path, save_steps=1)
    return path, trainer


def safetensors_content(path):
    """Tensors and metadata (the header's key order varies from process to process)."""
    with safe_open(path, framework="np") as f:
        return f.metadata(), {name: f.get_tensor(name) for name in f.keys()}


def assert_checkpoint_is_the_uninterrupted_one(path, uninterrupted):
    """The same content, bit for bit, as the uninterrupted run's checkpoint of that step."""
    reference = uninterrupted[0] / os.path.basename(path)
    for name in checkpoints.MODEL_NAMES + checkpoints.REQUIRED_NAMES:
        if name.endswith(".safetensors"):
            metadata, tensors = safetensors_content(os.path.join(path, name))
            expected_metadata, expected = safetensors_content(reference / name)
            assert metadata == expected_metadata and tensors.keys() == expected.keys()
            for key, tensor in tensors.items():
                np.testing.assert_array_equal(tensor, expected[key], err_msg=f"{path}/{name}")
        else:
            assert (reference / name).read_text() == Path(path, name).read_text(), \
                f"{path}/{name}"


def assert_resumes_to_the_uninterrupted_end(llama_dir, output_dir, uninterrupted, **args):
    """Before the next start only complete checkpoints are listed; the start
    leaves no leftovers; resume_from_checkpoint=True ends where the
    uninterrupted run ends, with each step logged once."""
    for _, path in checkpoints.list_checkpoints(output_dir):
        assert_checkpoint_is_the_uninterrupted_one(path, uninterrupted)
    resumed = train(llama_dir, output_dir, resume=True, **args)
    reference_dir, reference = uninterrupted
    np.testing.assert_array_equal(resumed.model.params, reference.model.params)
    assert resumed.state.log_history == reference.state.log_history
    metrics = (output_dir / "metrics.jsonl").read_text()
    assert metrics == (reference_dir / "metrics.jsonl").read_text()
    assert [json.loads(line)["step"] for line in metrics.splitlines()] == [1, 2, 3, 4, 5, 6]
    names = sorted(os.listdir(output_dir))
    listed = [os.path.basename(path) for _, path in checkpoints.list_checkpoints(output_dir)]
    assert names == sorted(listed + ["metrics.jsonl"]), names  # nothing else left
    for name in listed:
        assert_checkpoint_is_the_uninterrupted_one(output_dir / name, uninterrupted)
    return listed


# ---- kills in child processes ---------------------------------------------------------------

def test_kills_during_a_prune(llama_dir, uninterrupted, tmp_path):
    """save_total_limit=2: at step 4 the save of checkpoint-4 prunes checkpoint-2."""
    args = dict(save_steps=1, save_total_limit=2)
    changes = run_child(llama_dir, tmp_path / "record", args)
    points = kill_points(changes, "prune_checkpoints", 4)
    for k in points:
        output_dir = tmp_path / f"kill-{k}"
        run_child(llama_dir, output_dir, args, kill_at=k)
        listed = assert_resumes_to_the_uninterrupted_end(llama_dir, output_dir, uninterrupted,
                                                         **args)
        assert listed == ["checkpoint-5", "checkpoint-6"], (k, changes[k - 1])


@pytest.fixture(scope="module")
def killed_before_the_last_save(llama_dir, tmp_path_factory):
    """A run saving every 2 steps killed at the first change of its last save:
    checkpoint-2, checkpoint-4, a half-written temporary folder of checkpoint-6,
    and metrics.jsonl up to step 6."""
    args = dict(save_steps=2)
    record = tmp_path_factory.mktemp("record")
    changes = run_child(llama_dir, record, args)
    path = tmp_path_factory.mktemp("killed")
    run_child(llama_dir, path, args, kill_at=kill_points(changes, "write_checkpoint", 6)[0])
    assert [step for step, _ in checkpoints.list_checkpoints(path)] == [2, 4]
    assert [n for n in os.listdir(path) if n.startswith(".checkpoint-6.tmp-")]
    return path


def test_kills_during_an_overwrite_and_the_start_before_it(llama_dir, uninterrupted,
                                                           killed_before_the_last_save, tmp_path):
    """Resuming from the older checkpoint-2 rewrites checkpoint-4 over the one
    already there; the child is killed at each change of that save, and at each
    change of its start cleaning up the temporary folder of checkpoint-6."""
    args = dict(save_steps=2)
    record = tmp_path / "record"
    shutil.copytree(killed_before_the_last_save, record)
    changes = run_child(llama_dir, record, args, resume=str(record / "checkpoint-2"))
    points = (kill_points(changes, "clean_interrupted", 0)  # before the checkpoint is loaded
              + kill_points(changes, "write_checkpoint", 4))
    for k in points:
        output_dir = tmp_path / f"kill-{k}"
        shutil.copytree(killed_before_the_last_save, output_dir)
        run_child(llama_dir, output_dir, args, resume=str(output_dir / "checkpoint-2"), kill_at=k)
        listed = assert_resumes_to_the_uninterrupted_end(llama_dir, output_dir, uninterrupted,
                                                         **args)
        assert listed == ["checkpoint-2", "checkpoint-4", "checkpoint-6"], (k, changes[k - 1])


def test_kills_while_writing_a_new_checkpoint(llama_dir, uninterrupted, tmp_path):
    """A kill at each change of writing checkpoint-3 (nothing to overwrite)."""
    args = dict(save_steps=1)
    changes = run_child(llama_dir, tmp_path / "record", args)
    for k in kill_points(changes, "write_checkpoint", 3):
        output_dir = tmp_path / f"kill-{k}"
        run_child(llama_dir, output_dir, args, kill_at=k)
        listed = assert_resumes_to_the_uninterrupted_end(llama_dir, output_dir, uninterrupted,
                                                         **args)
        assert listed == [f"checkpoint-{n}" for n in range(1, 7)], (k, changes[k - 1])


# ---- metrics.jsonl after a resume ------------------------------------------------------------

def test_resume_from_an_older_checkpoint_logs_each_step_once(llama_dir, uninterrupted, tmp_path):
    train(llama_dir, tmp_path, save_steps=2)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"loss": 0.12')  # a line cut short by a kill
    assert_resumes_to_the_uninterrupted_end(llama_dir, tmp_path, uninterrupted, save_steps=2)
    resumed = train(llama_dir, tmp_path, resume=str(tmp_path / "checkpoint-2"), save_steps=2)
    assert (tmp_path / "metrics.jsonl").read_text() == \
        (uninterrupted[0] / "metrics.jsonl").read_text()
    assert resumed.state.log_history == uninterrupted[1].state.log_history


# ---- list, prune, resolve and clean on folders built by hand ---------------------------------

def make_folder(path, names, text="x"):
    os.makedirs(path, exist_ok=True)
    for name in names:
        with open(os.path.join(path, name), "w") as f:
            f.write(text)
    return path


def complete(path, text="x"):
    return make_folder(path, checkpoints.MODEL_NAMES + checkpoints.REQUIRED_NAMES, text)


def test_list_checkpoints_lists_only_complete_checkpoint_folders(tmp_path):
    for step in (2, 10, 9):
        complete(tmp_path / f"checkpoint-{step}")
    make_folder(tmp_path / "checkpoint-11", ["config.json"])  # trainer_state.json deleted
    make_folder(tmp_path / "checkpoint-12", ["trainer_state.json", "config.json"])  # weights gone
    make_folder(tmp_path / "checkpoint-13", [])
    complete(tmp_path / ".checkpoint-14.tmp-abc")
    complete(tmp_path / ".checkpoint-15.deleting-abc")
    complete(tmp_path / "checkpoint-best")
    (tmp_path / "checkpoint-16").write_text("a file")
    assert checkpoints.list_checkpoints(tmp_path) == [
        (2, str(tmp_path / "checkpoint-2")), (9, str(tmp_path / "checkpoint-9")),
        (10, str(tmp_path / "checkpoint-10"))]
    assert checkpoints.list_checkpoints(tmp_path / "missing") == []


def test_prune_deletes_the_oldest_complete_checkpoints_whole(tmp_path):
    for step in range(1, 5):
        complete(tmp_path / f"checkpoint-{step}")
    make_folder(tmp_path / "checkpoint-0", ["config.json"])
    checkpoints.prune_checkpoints(tmp_path, None)
    assert len(checkpoints.list_checkpoints(tmp_path)) == 4
    checkpoints.prune_checkpoints(tmp_path, 2)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-0", "checkpoint-3", "checkpoint-4"]


def test_resolve_resume_takes_only_complete_checkpoints(tmp_path):
    assert checkpoints.resolve_resume(tmp_path, None) is None
    assert checkpoints.resolve_resume(tmp_path, False) is None
    make_folder(tmp_path / "checkpoint-7", ["trainer_state.json", "config.json"])
    with pytest.raises(FileNotFoundError, match="holds no complete checkpoint"):
        checkpoints.resolve_resume(tmp_path, True)
    with pytest.raises(FileNotFoundError, match=r"resume_from_checkpoint .*checkpoint-7.* "
                                                r"\(no model.safetensors, optimizer"):
        checkpoints.resolve_resume(tmp_path, str(tmp_path / "checkpoint-7"))
    complete(tmp_path / "checkpoint-3")
    assert checkpoints.resolve_resume(tmp_path, True) == str(tmp_path / "checkpoint-3")
    assert checkpoints.resolve_resume(tmp_path, tmp_path / "checkpoint-3") == \
        str(tmp_path / "checkpoint-3")


def test_clean_interrupted_finishes_or_undoes_and_touches_nothing_else(tmp_path):
    complete(tmp_path / ".checkpoint-3.deleting-abc")             # a prune killed midway
    make_folder(tmp_path / ".checkpoint-3.deleting-def", [])
    complete(tmp_path / "checkpoint-4", "old")
    make_folder(tmp_path / ".checkpoint-4.tmp-abc", ["config.json"])  # a save killed midway
    complete(tmp_path / ".checkpoint-5.tmp-abc", "new")           # killed between the renames
    complete(tmp_path / "checkpoint-6", "old")
    complete(tmp_path / ".checkpoint-6.tmp-abc", "new")           # killed before the renames
    make_folder(tmp_path / "checkpoint-7", ["config.json"])       # older calign's rmtree
    make_folder(tmp_path / "checkpoint-8", [])
    make_folder(tmp_path / "checkpoint-9", ["trainer_state.json", "config.json"])
    make_folder(tmp_path / "checkpoint-9" / "ref_model", ["config.json"])
    make_folder(tmp_path / "checkpoint-10", ["config.json", "notes.txt"])  # not all calign's
    make_folder(tmp_path / "checkpoint-13", ["config.json"])
    make_folder(tmp_path / ".checkpoint-13.tmp-a", ["model.safetensors"])
    complete(tmp_path / ".checkpoint-13.tmp-b", "new")
    (tmp_path / ".metrics.jsonl.tmp").write_text("{")
    user = ["notes.txt", "final", "checkpoint-best", "my.checkpoint-3.tmp-abc", ".checkpoint-x",
            "checkpoint-12"]
    (tmp_path / "notes.txt").write_text("mine")
    make_folder(tmp_path / "final", ["config.json"])
    make_folder(tmp_path / "checkpoint-best", ["config.json"])
    make_folder(tmp_path / "my.checkpoint-3.tmp-abc", ["config.json"])
    make_folder(tmp_path / ".checkpoint-x", ["config.json"])
    outside = make_folder(tmp_path.parent / f"{tmp_path.name}-outside", ["config.json"])
    os.symlink(outside, tmp_path / "checkpoint-12")

    with pytest.warns(UserWarning) as caught:
        checkpoints.clean_interrupted(tmp_path)
    messages = " ".join(str(w.message) for w in caught)
    assert "recovered checkpoint-5, checkpoint-13" in messages
    assert "removed the incomplete checkpoint-7, checkpoint-8, checkpoint-9" in messages
    assert "checkpoint-10: not a complete checkpoint" in messages
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["checkpoint-4", "checkpoint-5", "checkpoint-6", "checkpoint-10", "checkpoint-13"] + user)
    for step, text in ((4, "old"), (5, "new"), (6, "old"), (13, "new")):
        assert (tmp_path / f"checkpoint-{step}" / "model.safetensors").read_text() == text
    assert sorted(os.listdir(tmp_path / "checkpoint-10")) == ["config.json", "notes.txt"]
    assert os.listdir(outside) == ["config.json"]
    with pytest.warns(UserWarning, match="checkpoint-10") as caught:  # nothing more to do
        checkpoints.clean_interrupted(tmp_path)
    assert len(caught) == 1
    checkpoints.clean_interrupted(tmp_path / "missing")


def test_a_failed_write_leaves_the_existing_checkpoint(llama_dir, tmp_path):
    model = calign.Model.from_pretrained(llama_dir)
    optimizer = calign.optim.AdamW(model)
    state = {"global_step": 3, "epoch": 1.0, "log_history": [], "num_tokens": 0}
    path = checkpoints.write_checkpoint(tmp_path, 3, model, None, optimizer, state)
    make_folder(path, ["stale.txt"])

    def fail(folder):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        checkpoints.write_checkpoint(tmp_path, 3, model, None, optimizer, state, write_extra=fail)
    assert os.listdir(tmp_path) == ["checkpoint-3"]
    assert "stale.txt" in os.listdir(path)
    checkpoints.write_checkpoint(tmp_path, 3, model, None, optimizer, state)  # overwrites whole
    assert os.listdir(tmp_path) == ["checkpoint-3"]
    assert sorted(os.listdir(path)) == sorted(checkpoints.MODEL_NAMES +
                                              checkpoints.REQUIRED_NAMES)
    assert checkpoints.read_trainer_state(path) == state
    (tmp_path / "checkpoint-5").write_text("mine")
    with pytest.raises(FileExistsError, match="checkpoint-5.* is not a checkpoint folder"):
        checkpoints.write_checkpoint(tmp_path, 5, model, None, optimizer, state)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-3", "checkpoint-5"]
    assert (tmp_path / "checkpoint-5").read_text() == "mine"
