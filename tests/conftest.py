"""The test suite's shared set-up.

- calign's pytest plugin (calign.testing.plugin: tiny_model, tiny_tokenizer,
  the record factories, calign_threads, record_metric, the --calign-* options
  and the experiment marker) is loaded here as well as through its entry
  point, so the suite has it when run against a source tree that is not
  installed (PYTHONPATH=python); pytester runs pytest inside tests of the
  plugin itself.
- tests/ is on sys.path, so the independent references import as
  `from reference import ...` whatever --import-mode pytest runs with.
"""

import os
import sys

pytest_plugins = ["calign.testing.plugin", "pytester"]

TESTS = os.path.dirname(os.path.abspath(__file__))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
