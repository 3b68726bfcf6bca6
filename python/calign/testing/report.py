"""The experiment report: what every test of a run recorded, as one JSON file.

    {"calign_version": "0.1.0", "seed": 0, "threads": 2, "build": {...},
     "tests": [{"nodeid": "tests/test_experiment_dpo.py::test_dpo_learns_the_rule",
                "outcome": "passed", "duration": 3.2, "experiment": true,
                "metrics": {"heldout_exact_match/before": 0.03, ...}}, ...]}

outcome is pytest's word for the test as a whole: "passed", "failed",
"skipped", "xfailed", "xpassed", or "error" (its set-up or tear-down failed);
duration is the seconds of set-up, call and tear-down together.
"""

import json
import os
import tempfile

import numpy as np

from calign import checks


class ExperimentReport:
    """Collects per-test entries as tests run; write(path) saves them."""

    def __init__(self):
        self.tests = {}  # nodeid -> entry, in the order tests started

    def entry(self, nodeid):
        return self.tests.setdefault(nodeid, {"nodeid": nodeid, "outcome": None,
                                              "duration": 0.0, "experiment": False,
                                              "metrics": {}})

    def record_metric(self, nodeid, name, value):
        """Stores metric `name` of test `nodeid`: a finite number or a list of
        them (a curve); recording a name again replaces its value."""
        checks.text("name", name)
        if isinstance(value, (list, tuple, np.ndarray)):
            value = [checks.real(f"{name}[{i}]", v) for i, v in enumerate(list(value))]
        elif checks.is_int(value):
            value = int(value)
        else:
            value = checks.real(name, value)
        self.entry(nodeid)["metrics"][name] = value

    def add_phase(self, nodeid, phase, outcome, duration, was_xfail=False):
        """Folds one phase ("setup", "call", "teardown") of a test into its
        entry: the first phase that does not pass decides the outcome."""
        entry = self.entry(nodeid)
        entry["duration"] += duration
        if was_xfail:
            outcome = "xfailed" if outcome == "skipped" else "xpassed"
        elif outcome == "failed" and phase != "call":
            outcome = "error"
        if entry["outcome"] in (None, "passed"):
            entry["outcome"] = outcome

    def as_dict(self, **header):
        return dict(header, tests=list(self.tests.values()))

    def write(self, path, **header):
        """Writes the report to `path` as JSON, atomically (a temporary file
        renamed over it): a reader never sees half a report."""
        path = os.path.abspath(path)
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=".calign-report-", suffix=".json", dir=folder)
        try:
            with os.fdopen(handle, "w") as f:
                json.dump(self.as_dict(**header), f, indent=2)
                f.write("\n")
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 -> what open() would give
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
