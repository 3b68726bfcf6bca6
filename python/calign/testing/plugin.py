"""calign's pytest plugin: fixtures, options and the experiment report.

pytest loads it through the entry point calign registers (group pytest11,
name "calign.testing.plugin"), or with `-p calign.testing.plugin`, or from a
conftest.py's `pytest_plugins = ["calign.testing.plugin"]`; `-p
no:calign.testing.plugin` turns it off. See calign.testing for the list.
"""

import argparse
import datetime
import json
import os

import pytest

import calign
from calign import checks
from calign.testing import data
from calign.testing.models import FAMILIES, save_tiny_model
from calign.testing.report import ExperimentReport
from calign.testing.wordtokenizer import save_word_tokenizer

MAX_THREADS = 4096  # calign.set_num_threads' bound


def _threads_option(text):
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes an integer, got {text!r}") from None
    if not 1 <= n <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be in [1, {MAX_THREADS}], got {n}")
    return n


def _seed_option(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes an integer, got {text!r}") from None


def pytest_addoption(parser):
    group = parser.getgroup("calign", "calign test kit (calign.testing)")
    group.addoption("--calign-threads", type=_threads_option, default=None, metavar="N",
                    help="run calign with N threads for the whole session "
                         "(calign.set_num_threads(N); OMP_NUM_THREADS=N for the processes "
                         "tests start). Default: calign's own default.")
    group.addoption("--calign-seed", type=_seed_option, default=0, metavar="S",
                    help="the seed the tiny_model fixture and the record factories default "
                         "to (default 0).")
    group.addoption("--calign-report", default=None, metavar="PATH",
                    help="write each test's nodeid, outcome, duration and recorded metrics "
                         "(record_metric) to PATH as JSON.")


class Session:
    """The plugin's per-run state: the report being collected, the thread
    setting to restore, where to write the report."""

    def __init__(self, config):
        self.config = config
        self.report = ExperimentReport()
        self.seed = config.getoption("calign_seed")
        self.threads = config.getoption("calign_threads")
        path = config.getoption("calign_report")
        self.report_path = (os.path.join(config.invocation_params.dir, path)
                            if path is not None else None)
        self.previous_threads = self.previous_omp = None

    def start(self):
        if self.threads is not None:
            self.previous_threads = calign.set_num_threads(self.threads)
            self.previous_omp = os.environ.get("OMP_NUM_THREADS")
            os.environ["OMP_NUM_THREADS"] = str(self.threads)

    def stop(self):
        if self.threads is None:
            return
        calign.set_num_threads(self.previous_threads)
        if self.previous_omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = self.previous_omp

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item):
        entry = self.report.entry(item.nodeid)
        entry["experiment"] = item.get_closest_marker("experiment") is not None

    def pytest_runtest_logreport(self, report):
        self.report.add_phase(report.nodeid, report.when, report.outcome, report.duration,
                              was_xfail=hasattr(report, "wasxfail"))

    def pytest_sessionfinish(self, session):
        if self.report_path is None:
            return
        self.report.write(self.report_path, calign_version=calign.__version__,
                          created=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                          seed=self.seed, threads=calign.get_num_threads(),
                          build=calign.build_info())

    def pytest_terminal_summary(self, terminalreporter):
        recorded = [e for e in self.report.tests.values() if e["metrics"]]
        if recorded:
            terminalreporter.section("calign metrics")
            for entry in recorded:
                shown = ", ".join(f"{name}={_short(value)}"
                                  for name, value in entry["metrics"].items())
                terminalreporter.write_line(f"{entry['nodeid']} [{entry['outcome']}]: {shown}")
        if self.report_path is not None:
            terminalreporter.write_line(f"calign report written to {self.report_path}")


def _short(value):
    if isinstance(value, list):
        return f"[{len(value)} values]"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


SESSION = pytest.StashKey[Session]()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "experiment: a test that trains something and records metrics with "
                   "record_metric (select with -m experiment; see --calign-report)")
    session = Session(config)
    config.stash[SESSION] = session
    config.pluginmanager.register(session, "calign.testing.session")
    session.start()


def pytest_unconfigure(config):
    session = config.stash.get(SESSION, None)
    if session is not None:
        session.stop()
        config.pluginmanager.unregister(session)
        del config.stash[SESSION]


def pytest_report_header(config):
    session = config.stash[SESSION]
    threads = calign.get_num_threads()
    origin = " (--calign-threads)" if session.threads is not None else ""
    return f"calign {calign.__version__}: seed {session.seed}, {threads} threads{origin}"


# ---- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def calign_seed(pytestconfig):
    """The session's seed (--calign-seed, default 0): what tiny_model and the
    record factories use when a test gives no seed."""
    return pytestconfig.stash[SESSION].seed


def _cache_key(*parts):
    return json.dumps(parts, sort_keys=True, default=lambda value: os.fspath(value)
                      if isinstance(value, os.PathLike) else repr(value))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, calign_seed):
    """Factory of tiny random checkpoints, built by calign (no torch needed):

        path = tiny_model("llama", vocab_size=101, num_hidden_layers=1, tokenizer=True)
        calign.Model.from_pretrained(path)
        transformers.AutoModelForCausalLM.from_pretrained(path)   # the same model

    tiny_model(family="llama", *, seed=None, tokenizer=None, **config_overrides)
    returns a pathlib.Path to a folder with config.json and model.safetensors.
    family: "gpt2", "llama", "qwen2" or "qwen3", with odd default sizes
    (calign.testing.FAMILY_CONFIGS); config_overrides are config.json fields;
    seed defaults to --calign-seed; tokenizer: None, True (a word tokenizer
    of vocab_size tokens) or a tokenizer folder (e.g. from tiny_tokenizer) to
    copy in, which also sets vocab_size and pad/eos/bos_token_id unless given.

    Checkpoints are built once per session for each set of arguments and
    shared: treat the folder as read-only (copy it with shutil.copytree to
    change it)."""
    built = {}

    def make(family="llama", *, seed=None, tokenizer=None, **config_overrides):
        checks.choice("family", family, FAMILIES)  # before it names a folder
        seed = calign_seed if seed is None else seed
        key = _cache_key(family, seed, tokenizer, config_overrides)
        if key not in built:
            folder = tmp_path_factory.mktemp(f"tiny_{family}")
            built[key] = save_tiny_model(folder / "checkpoint", family, seed=seed,
                                         tokenizer=tokenizer, **config_overrides)
        return built[key]

    return make


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """Factory of word-level tokenizer folders (tokenizer.json +
    tokenizer_config.json) that calign.Tokenizer and transformers'
    AutoTokenizer load:

        folder = tiny_tokenizer()                    # <pad>=0, <eos>=1, w0=2, ... w29=31
        folder = tiny_tokenizer(chat_template=True)  # + <system>, <user>, <assistant>
        folder = tiny_tokenizer(words=["the", "sky", "is", "blue"], pre_tokenizer="whitespace")

    Arguments as calign.testing.save_word_tokenizer (words, vocab_size,
    eos_token, pad_token, bos_token, unk_token, chat_template, pre_tokenizer).
    Built once per session for each set of arguments: treat as read-only."""
    built = {}

    def make(words=None, **options):
        key = _cache_key(words, options)
        if key not in built:
            built[key] = save_word_tokenizer(tmp_path_factory.mktemp("tiny_tokenizer"),
                                             words, **options)
        return built[key]

    return make


def _seeded(factory, default_seed):
    def make(n, *, seed=None, **options):
        return factory(n, seed=default_seed if seed is None else seed, **options)

    make.__doc__ = factory.__doc__
    return make


@pytest.fixture(scope="session")
def preference_records(calign_seed):
    """Factory: preference_records(n, *, seed=None, style="text", words=None,
    vocab_size=32, prompt_length=(2, 5), completion_length=(1, 4)) -> n
    random pairs in TRL's fields; style "text" (prompt/chosen/rejected over
    the words w0, w1, ...), "tokenized" (*_input_ids) or "conversational".
    seed defaults to --calign-seed. See calign.testing.preference_records."""
    return _seeded(data.preference_records, calign_seed)


@pytest.fixture(scope="session")
def kto_records(calign_seed):
    """Factory: kto_records(n, *, seed=None, style="text",
    desirable_fraction=0.5, ...) -> n random prompt/completion/label records
    (or prompt_input_ids/completion_input_ids/label with style="tokenized").
    seed defaults to --calign-seed. See calign.testing.kto_records."""
    return _seeded(data.kto_records, calign_seed)


@pytest.fixture(scope="session")
def sft_records(calign_seed):
    """Factory: sft_records(n, *, seed=None, style="prompt_completion", ...) ->
    n random SFT records: prompt/completion, text, input_ids ("tokenized") or
    messages. seed defaults to --calign-seed. See calign.testing.sft_records."""
    return _seeded(data.sft_records, calign_seed)


@pytest.fixture
def calign_threads(request):
    """calign's thread count for this test, restored after it.

        def test_one_thread(calign_threads):
            calign_threads(1)          # returns the previous count

        @pytest.mark.parametrize("calign_threads", [1, 2], indirect=True)
        def test_any_count(calign_threads): ...   # set before the test starts
    """
    previous = calign.get_num_threads()
    if hasattr(request, "param"):
        calign.set_num_threads(request.param)
    yield calign.set_num_threads
    calign.set_num_threads(previous)


@pytest.fixture
def record_metric(request):
    """record_metric(name, value): stores a metric of this test (a finite
    number or a list of them; a name recorded again is replaced). Metrics
    appear in the terminal summary and, with --calign-report PATH, in the
    JSON report under this test's nodeid. Mark such tests
    @pytest.mark.experiment."""
    session = request.config.stash[SESSION]
    nodeid = request.node.nodeid

    def record(name, value):
        session.report.record_metric(nodeid, name, value)

    return record
