"""calign's test kit: what calign's own tests use, for experiments written as tests.

Installed with calign as a pytest plugin (calign.testing.plugin, entry point
group pytest11), it gives every test suite in the environment:

fixtures
    tiny_model          factory: tiny_model("qwen3", vocab_size=101, ...) -> checkpoint folder
    tiny_tokenizer      factory: tiny_tokenizer(chat_template=True, ...) -> tokenizer folder
    preference_records, kto_records, sft_records
                        factories of seeded records in TRL's field names
    calign_seed         the session's seed (--calign-seed), the factories' default
    calign_threads      set calign's thread count for one test (restored after it)
    record_metric       record_metric("accuracy", 0.9): a metric of this test, in the report
options
    --calign-seed S     the seed tiny_model and the record factories default to (0)
    --calign-threads N  calign.set_num_threads(N) for the session (and OMP_NUM_THREADS
                        for the processes tests start)
    --calign-report F   write every test's outcome, duration and metrics to F as JSON
marker
    @pytest.mark.experiment   a test that trains something and records metrics

The functions below work without pytest (in a notebook or a script), and
importing this package does not import pytest.
"""

from calign.testing.data import kto_records, preference_records, sft_records
from calign.testing.improves import Improvement, assert_improves
from calign.testing.models import FAMILIES, FAMILY_CONFIGS, save_tiny_model, tiny_config
from calign.testing.threads import num_threads
from calign.testing.wordtokenizer import CHAT_TEMPLATE, save_word_tokenizer, word_list

__all__ = ["CHAT_TEMPLATE", "FAMILIES", "FAMILY_CONFIGS", "Improvement", "assert_improves",
           "kto_records", "num_threads", "preference_records", "save_tiny_model",
           "save_word_tokenizer", "sft_records", "tiny_config", "word_list"]
