"""calign.testing and its pytest plugin: the options reach the fixtures, the
report holds what tests recorded, assert_improves passes and fails with the
numbers, and the fixtures give checkpoints and tokenizers that calign and
transformers both load and agree on.

Runs of pytest inside these tests use pytester (in process, the plugin
loaded with -p) or a subprocess where the loading itself is under test."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

import calign
from calign import testing
from calign.testing.report import ExperimentReport

PLUGIN = ("-p", "calign.testing.plugin")


def run_inner(pytester, source, *args):
    """Runs a test file holding `source` in pytester's folder, with the plugin."""
    pytester.makepyfile(test_inner=source)
    return pytester.runpytest(*PLUGIN, "-p", "no:cacheprovider", *args)


# ---- options ---------------------------------------------------------------------------------

def test_seed_and_threads_options_reach_the_tests(pytester):
    before = calign.get_num_threads()
    result = run_inner(pytester, """
        import os
        import calign
        from calign import testing

        def test_options(calign_seed, preference_records, kto_records, sft_records):
            assert calign_seed == 7
            assert preference_records(3) == testing.preference_records(3, seed=7)
            assert kto_records(4) == testing.kto_records(4, seed=7)
            assert sft_records(2, seed=1) == testing.sft_records(2, seed=1)
            assert calign.get_num_threads() == 1
            assert os.environ["OMP_NUM_THREADS"] == "1"
        """, "--calign-seed", "7", "--calign-threads", "1")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["calign 0.1.0: seed 7, 1 threads (--calign-threads)"])
    assert calign.get_num_threads() == before  # restored when the run ended


@pytest.mark.parametrize("args,message", [
    (["--calign-threads", "0"], "argument --calign-threads: must be in [[]1, 4096], got 0"),
    (["--calign-threads", "two"], "argument --calign-threads: takes an integer, got 'two'"),
    (["--calign-seed", "1.5"], "argument --calign-seed: takes an integer, got '1.5'"),
])
def test_bad_option_values_are_usage_errors(pytester, args, message):
    result = run_inner(pytester, "def test_nothing():\n    pass\n", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


def test_the_options_and_fixtures_are_documented(pytester):
    result = pytester.runpytest(*PLUGIN, "--help")
    result.stdout.fnmatch_lines(["*--calign-threads=N*", "*--calign-seed=S*",
                                 "*--calign-report=PATH*"])
    result = pytester.runpytest(*PLUGIN, "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.experiment: *"])
    pytester.makepyfile(test_inner="def test_nothing():\n    pass\n")
    result = pytester.runpytest(*PLUGIN, "--fixtures")
    section = result.stdout.str().split("fixtures defined from calign.testing.plugin")[1]
    section = section.split("fixtures defined from")[0]
    for name in ("tiny_model", "tiny_tokenizer", "preference_records", "kto_records",
                 "sft_records", "calign_seed", "calign_threads", "record_metric"):
        assert f"\n{name} " in section
    assert "no docstring available" not in section


def test_calign_threads_sets_for_one_test_and_restores(pytester):
    before = calign.get_num_threads()
    result = run_inner(pytester, f"""
        import pytest
        import calign

        def test_set(calign_threads):
            assert calign_threads(1) == {before}
            assert calign.get_num_threads() == 1

        def test_restored_after_it():
            assert calign.get_num_threads() == {before}

        @pytest.mark.parametrize("calign_threads", [1, 2], indirect=True)
        def test_indirect(calign_threads, request):
            assert calign.get_num_threads() == request.node.callspec.params["calign_threads"]
        """)
    result.assert_outcomes(passed=4)
    assert calign.get_num_threads() == before


# ---- the report ------------------------------------------------------------------------------

INNER_TESTS = """
import numpy as np
import pytest

@pytest.mark.experiment
def test_records(record_metric):
    record_metric("accuracy", 0.75)
    record_metric("steps", np.int64(3))
    record_metric("curve", [1.0, np.float32(0.5)])
    record_metric("accuracy", 0.8)   # recorded again: replaced

@pytest.mark.experiment
def test_records_then_fails(record_metric):
    record_metric("loss", 2.5)
    assert False

def test_plain():
    pass

@pytest.mark.skip(reason="not today")
def test_skipped():
    pass

@pytest.mark.xfail(reason="known")
def test_xfail():
    assert False

@pytest.fixture
def broken():
    raise RuntimeError("set-up fails")

def test_setup_error(broken):
    pass
"""


def test_report_holds_outcomes_durations_and_metrics(pytester):
    result = run_inner(pytester, INNER_TESTS, "--calign-report", "out/r.json",
                       "--calign-seed", "3")
    result.assert_outcomes(passed=2, failed=1, skipped=1, xfailed=1, errors=1)
    result.stdout.fnmatch_lines(["*calign metrics*",
                                 "test_inner.py::test_records [[]passed]: accuracy=0.8, "
                                 "steps=3, curve=[[]2 values]",
                                 "test_inner.py::test_records_then_fails [[]failed]: loss=2.5",
                                 "calign report written to *out/r.json"])
    folder = pytester.path / "out"
    assert os.listdir(folder) == ["r.json"]  # no temporary file left beside it
    report = json.loads((folder / "r.json").read_text())
    assert report["calign_version"] == calign.__version__ and report["seed"] == 3
    assert report["threads"] == calign.get_num_threads()
    assert report["build"]["blas_core"] and report["created"]
    tests = {t["nodeid"].split("::")[1]: t for t in report["tests"]}
    assert {name: t["outcome"] for name, t in tests.items()} == {
        "test_records": "passed", "test_records_then_fails": "failed", "test_plain": "passed",
        "test_skipped": "skipped", "test_xfail": "xfailed", "test_setup_error": "error"}
    assert tests["test_records"]["metrics"] == {"accuracy": 0.8, "steps": 3, "curve": [1.0, 0.5]}
    assert tests["test_records_then_fails"]["metrics"] == {"loss": 2.5}
    assert tests["test_plain"]["metrics"] == {}
    assert [name for name, t in tests.items() if t["experiment"]] == [
        "test_records", "test_records_then_fails"]
    assert all(t["duration"] >= 0 for t in tests.values())


def test_no_report_without_the_option(pytester):
    result = run_inner(pytester, INNER_TESTS)
    result.assert_outcomes(passed=2, failed=1, skipped=1, xfailed=1, errors=1)
    assert not list(pytester.path.rglob("*.json"))
    assert "calign report written" not in result.stdout.str()


@pytest.mark.parametrize("name,value,match", [
    ("accuracy", float("nan"), "accuracy must be a finite number"),
    ("accuracy", "high", "accuracy must be a finite number, got 'high'"),
    ("curve", [1.0, float("inf")], r"curve\[1\] must be a finite number"),
    ("", 1.0, "name must be a non-empty string"),
    (None, 1.0, "name must be a non-empty string"),
])
def test_metrics_json_cannot_hold_are_refused_by_name(name, value, match):
    with pytest.raises(ValueError, match=match):
        ExperimentReport().record_metric("test_x", name, value)


# ---- assert_improves -------------------------------------------------------------------------

def log_history(margins):
    """A trainer's log_history: training rows, then a summary row without the metric."""
    rows = [{"loss": 1.0 / (i + 1), "rewards/margins": m, "step": 10 * (i + 1)}
            for i, m in enumerate(margins)]
    return rows + [{"train_runtime": 1.0, "step": 10 * len(margins)}]


def test_assert_improves_passes_and_returns_the_numbers():
    result = testing.assert_improves(log_history([0.0, 0.1, 0.2, 0.5, 0.6, 0.7]),
                                     "rewards/margins", window=2)
    assert result.first == pytest.approx(0.05) and result.last == pytest.approx(0.65)
    assert result.improvement == pytest.approx(0.6) and result.window == 2
    loss = testing.assert_improves(log_history([0.0] * 8), "loss", direction="decrease")
    assert loss.window == 2  # a quarter of 8
    assert loss.improvement == pytest.approx((1 + 1 / 2) / 2 - (1 / 7 + 1 / 8) / 2)
    assert testing.assert_improves(np.array([3.0, 1.0, 4.0, 5.0]), window=2).improvement == 2.5
    assert testing.assert_improves([1, 2], min_improvement=1).improvement == 1.0


def test_assert_improves_fails_with_the_numbers():
    with pytest.raises(AssertionError) as failed:
        testing.assert_improves(log_history([0.5, 0.4, 0.3, 0.3, 0.2, 0.1]), "rewards/margins",
                                window=2)
    assert str(failed.value).startswith(
        "rewards/margins did not increase at all: the mean of the first 2 value(s) "
        "(steps 10-20) is 0.45, of the last 2 (steps 50-60) 0.15, a change of -0.3; "
        "values: [0.5, 0.4, 0.3, 0.3, 0.2, 0.1] (6 values)")
    with pytest.raises(AssertionError, match=r"^the metric did not increase by at least 0.5: "
                                             r".* is 1, .* 1.2, a change of \+0.2"):
        testing.assert_improves([1.0, 1.2], min_improvement=0.5)
    with pytest.raises(AssertionError, match="did not decrease at all"):
        testing.assert_improves([1.0, 1.0, 1.0, 1.0], direction="decrease")  # flat fails
    with pytest.raises(AssertionError, match=r"loss is not finite at entries \[2\]"):
        testing.assert_improves([{"loss": 3.0}, {"loss": 2.0}, {"loss": math.nan}], "loss",
                                direction="decrease")


@pytest.mark.parametrize("history,key,options,error,match", [
    ({"loss": [1, 2]}, "loss", {}, TypeError, "history must be a list of dicts"),
    ([{"loss": 1.0}, {"loss": 0.5}], "accuracy", {}, ValueError,
     r"key 'accuracy' is in no entry of history \(its keys: \['loss'\]\)"),
    ([{"loss": 1.0}, {"loss": "low"}], "loss", {}, ValueError,
     "history's 'loss' must be a number, got 'low'"),
    ([1.0, 2.0], "loss", {}, ValueError, "key must be None when history holds numbers"),
    ([1.0, "2"], None, {}, ValueError, r"history\[1\] must be a number"),
    ([1.0], None, {}, ValueError, "history must hold at least 2 values"),
    ([1.0, 2.0, 3.0], None, dict(window=2), ValueError, r"window must be .*in \[1, 1\]"),
    ([1.0, 2.0], None, dict(direction="up"), ValueError, "direction must be one of"),
    ([1.0, 2.0], None, dict(min_improvement=-1), ValueError, "min_improvement must be"),
])
def test_assert_improves_bad_arguments(history, key, options, error, match):
    with pytest.raises(error, match=match):
        testing.assert_improves(history, key, **options)


def test_assert_improves_on_a_real_trainer(tiny_model, preference_records, tmp_path):
    """The log_history of a DPO run on random pairs (which it fits): margins up, loss down."""
    trainer = calign.DPOTrainer(str(tiny_model("llama", vocab_size=37)), args=calign.DPOConfig(
        output_dir=str(tmp_path), beta=0.5, learning_rate=1e-2, max_steps=12,
        per_device_train_batch_size=4, logging_steps=1, save_steps=0, disable_tqdm=True),
        train_dataset=preference_records(8, style="tokenized", vocab_size=37))
    trainer.train()
    testing.assert_improves(trainer.state.log_history, "rewards/margins", min_improvement=0.1)
    testing.assert_improves(trainer.state.log_history, "loss", direction="decrease")


# ---- fixtures: checkpoints, tokenizers, records ----------------------------------------------

def transformers_logits(path, ids):
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
    return hf.eval()(torch.tensor(ids)).logits.detach().numpy()


@pytest.mark.parametrize("family", testing.FAMILIES)
def test_tiny_model_loads_in_calign_and_transformers_alike(tiny_model, family):
    path = tiny_model(family)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == family and config["vocab_size"] % 8  # the odd sizes
    heads = config.get("num_attention_heads", config.get("n_head"))
    assert config.get("num_key_value_heads", heads) in (heads, heads // 3)
    model = calign.Model.from_pretrained(path)
    ids = np.random.default_rng(0).integers(0, model.vocab_size, (2, 9))
    np.testing.assert_allclose(model.logits(ids), transformers_logits(path, ids), atol=1e-4)
    assert tiny_model(family) == path  # built once, then shared


def test_tiny_model_arguments(tiny_model, calign_seed):
    path = tiny_model("qwen2", vocab_size=101, num_hidden_layers=1)
    config = json.loads((path / "config.json").read_text())
    assert config["vocab_size"] == 101 and config["num_hidden_layers"] == 1
    default = calign.Model.from_pretrained(path).params
    np.testing.assert_array_equal(calign.Model.from_pretrained(
        tiny_model("qwen2", vocab_size=101, num_hidden_layers=1, seed=calign_seed)).params,
        default)
    other = tiny_model("qwen2", vocab_size=101, num_hidden_layers=1, seed=calign_seed + 1)
    assert other != path and (calign.Model.from_pretrained(other).params != default).any()
    llama = json.loads((tiny_model("llama", head_dim=None) / "config.json").read_text())
    assert llama["head_dim"] is None and calign.Model.from_pretrained(
        tiny_model("llama", head_dim=None)).state_dict()[
        "model.layers.0.self_attn.q_proj.weight"].shape == (48, 48)  # hidden / heads = 8


def test_tiny_model_with_a_tokenizer(tiny_model, tiny_tokenizer):
    words = tiny_tokenizer(chat_template=True)
    path = tiny_model("gpt2", tokenizer=words)
    config = json.loads((path / "config.json").read_text())
    ours = calign.Tokenizer.from_pretrained(str(path))
    assert config["vocab_size"] == ours.vocab_size == 35  # <pad> <eos> 3 roles w0..w29
    assert (config["pad_token_id"], config["eos_token_id"]) == (0, 1)
    assert ours.chat_template == testing.CHAT_TEMPLATE
    with_words = tiny_model("llama", tokenizer=True, vocab_size=40)
    assert sorted(os.listdir(with_words)) == ["config.json", "model.safetensors",
                                             "tokenizer.json", "tokenizer_config.json"]
    assert calign.Tokenizer.from_pretrained(str(with_words)).encode("w37 <eos>") == [39, 1]
    with pytest.raises(ValueError, match="vocab_size must be at least the tokenizer's 35 "
                                         "tokens, got 20"):
        tiny_model("llama", tokenizer=words, vocab_size=20)
    with pytest.raises(ValueError, match="tokenizer must be None, True or a folder"):
        tiny_model("llama", tokenizer="/no/such/folder")
    with pytest.raises(ValueError, match=r"family must be one of \['gpt2', 'llama', 'qwen2', "
                                         r"'qwen3'\], got 'mamba'"):
        tiny_model("mamba")
    with pytest.raises(ValueError, match="model_type must be the family 'llama'"):
        testing.tiny_config("llama", model_type="qwen2")


def test_tiny_tokenizer_agrees_with_transformers(tiny_tokenizer):
    folder = tiny_tokenizer(chat_template=True)
    ours = calign.Tokenizer.from_pretrained(str(folder))
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    assert (ours.pad_token_id, ours.eos_token_id) == (theirs.pad_token_id,
                                                      theirs.eos_token_id) == (0, 1)
    text = "w0 w17 unknown w29"
    assert ours.encode(text) == theirs(text)["input_ids"] == [5, 22, 0, 34]
    messages = [{"role": "user", "content": "w3 w4"}, {"role": "assistant", "content": "w5"}]
    rendered = ours.apply_chat_template(messages, add_generation_prompt=False)
    assert rendered == theirs.apply_chat_template(messages, tokenize=False) == \
        "<user> w3 w4 <eos> <assistant> w5 <eos> "
    ids = ours.apply_chat_template(messages, tokenize=True)
    assert ours.decode(ids, skip_special_tokens=True) == "<user> w3 w4 <assistant> w5"
    assert tiny_tokenizer(chat_template=True) == folder  # built once, then shared


def test_word_tokenizer_options(tmp_path):
    plain = calign.Tokenizer.from_pretrained(str(testing.save_word_tokenizer(
        tmp_path / "a", ["the", "sky", "is", "blue", "."], pre_tokenizer="whitespace")))
    assert plain.encode("the sky is blue.") == [2, 3, 4, 5, 6] and plain.vocab_size == 7
    own_eos = calign.Tokenizer.from_pretrained(str(testing.save_word_tokenizer(
        tmp_path / "b", testing.word_list(23), eos_token="w1", pad_token=None, unk_token="w0")))
    assert own_eos.vocab_size == 23 and own_eos.eos_token_id == 1 and own_eos.pad_token is None
    assert own_eos.encode("w5 what") == [5, 0]
    assert own_eos.decode([1, 5]) == "w1 w5"  # a word stays a word in the vocabulary, but
    assert own_eos.decode([1, 5], skip_special_tokens=True) == "w5"  # eos is special (as in
    # transformers, which makes the config's named tokens special whatever tokenizer.json says)
    for words, options, match in [
            (["a", "a"], {}, r"words\[1\] must be a word not listed before"),
            (["a b"], {}, r"words\[0\] must be a non-empty string without whitespace"),
            (None, dict(vocab_size=2), r"vocab_size must be an integer >= 3"),
            (["a"], dict(vocab_size=5), "give words or vocab_size, not both"),
            (None, dict(pre_tokenizer="bpe"), "pre_tokenizer must be one of"),
            (None, dict(chat_template=""), "chat_template must be None, True or a jinja2"),
            (None, dict(eos_token=""), "eos_token must be None or a non-empty string")]:
        with pytest.raises(ValueError, match=match):
            testing.save_word_tokenizer(tmp_path / "bad", words, **options)


@pytest.mark.parametrize("style", ["text", "tokenized", "conversational"])
def test_preference_records(preference_records, style):
    records = preference_records(50, style=style)
    assert records == preference_records(50, style=style)
    assert records != preference_records(50, style=style, seed=99)
    for record in records:
        if style == "tokenized":
            assert set(record) == {"prompt_input_ids", "chosen_input_ids", "rejected_input_ids"}
            assert 2 <= len(record["prompt_input_ids"]) <= 5
            assert 1 <= len(record["chosen_input_ids"]) <= 4
            assert all(1 <= i < 32 for key in record for i in record[key])
            assert record["chosen_input_ids"] != record["rejected_input_ids"]
        elif style == "text":
            assert set(record) == {"prompt", "chosen", "rejected"}
            assert 2 <= len(record["prompt"].split()) <= 5 and record["chosen"][0] == " "
            assert record["chosen"] != record["rejected"]
        else:
            assert [m["role"] for m in record["prompt"] + record["chosen"]] == ["user",
                                                                              "assistant"]


def test_records_train_with_the_tiny_tokenizer(tiny_model, tiny_tokenizer, preference_records,
                                               kto_records, sft_records, tmp_path):
    """Every style is a dataset calign's trainers take, with the word tokenizer."""
    words = tiny_tokenizer(chat_template=True)
    path = tiny_model("llama", tokenizer=words, num_hidden_layers=1)
    settings = dict(max_steps=1, per_device_train_batch_size=4, save_steps=0, disable_tqdm=True)
    for style in ("text", "tokenized", "conversational"):
        data = preference_records(4, style=style, vocab_size=35)
        trainer = calign.DPOTrainer(str(path), args=calign.DPOConfig(
            output_dir=str(tmp_path / f"dpo_{style}"), **settings), train_dataset=data,
            processing_class=str(words))
        assert len(trainer.train_examples) == 4
        trainer.train()
        data = kto_records(4, style=style, vocab_size=35)
        assert sum(r["label"] for r in data) == 2
        calign.KTOTrainer(str(path), args=calign.KTOConfig(
            output_dir=str(tmp_path / f"kto_{style}"), **settings), train_dataset=data,
            processing_class=str(words)).train()
    for style in ("prompt_completion", "text", "tokenized", "messages"):
        trainer = calign.SFTTrainer(str(path), args=calign.SFTConfig(
            output_dir=str(tmp_path / f"sft_{style}"), **settings),
            train_dataset=sft_records(4, style=style, vocab_size=35), processing_class=str(words))
        trainer.train()
        assert math.isfinite(trainer.state.log_history[0]["loss"])


def test_record_factories_bad_input():
    for call, match in [
            (lambda: testing.preference_records(0), "n must be an integer >= 1"),
            (lambda: testing.preference_records(2, style="chat"), "style must be one of"),
            (lambda: testing.preference_records(2, prompt_length=(3, 2)),
             r"prompt_length must be a pair of integers \(shortest, longest\)"),
            (lambda: testing.kto_records(2, desirable_fraction=1.5),
             r"desirable_fraction must be a finite number in \[0, 1\]"),
            (lambda: testing.sft_records(2, words=["a"]), "words must be a list of at least 2"),
            (lambda: testing.sft_records(2, seed="x"), "seed must be an integer")]:
        with pytest.raises(ValueError, match=match):
            call()
    assert [r["label"] for r in testing.kto_records(10, desirable_fraction=0.3)].count(True) == 3


def test_num_threads_restores_after_an_exception():
    before = calign.get_num_threads()
    with pytest.raises(KeyError):
        with testing.num_threads(1) as previous:
            assert previous == before and calign.get_num_threads() == 1
            raise KeyError("inside")
    assert calign.get_num_threads() == before


# ---- loading ---------------------------------------------------------------------------------

def test_importing_calign_does_not_import_pytest():
    code = ("import sys, calign, calign.testing; "
            "print('pytest' in sys.modules, 'calign.testing.plugin' in sys.modules)")
    root = os.path.dirname(os.path.dirname(calign.__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    assert out.stdout.split() == ["False", "False"]


def test_entry_point_is_named_after_the_module(tmp_path):
    """pyproject.toml registers the plugin under its module's name, so a
    conftest's pytest_plugins naming the module finds it loaded (registered
    twice under two names, pytest would refuse to start). Checked in a fresh
    process: the plugin loaded by -p under that name, and a conftest naming it too."""
    import tomllib

    pyproject = os.path.join(os.path.dirname(__file__), "..", "pyproject.toml")
    with open(pyproject, "rb") as f:
        entry_points = tomllib.load(f)["project"]["entry-points"]["pytest11"]
    assert entry_points == {"calign.testing.plugin": "calign.testing.plugin"}
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["calign.testing.plugin"]\n')
    (tmp_path / "test_it.py").write_text("def test_it(calign_seed):\n    assert calign_seed == 5\n")
    root = os.path.dirname(os.path.dirname(calign.__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "calign.testing.plugin", "-q",
                          "-p", "no:cacheprovider", "--calign-seed", "5", str(tmp_path)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout
