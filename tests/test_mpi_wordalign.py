"""Word-alignment EM over a corpus sharded across MPI ranks.

Every rank fits on the whole corpus (vocabularies and table from all of it),
runs the E-step on its block of the pairs, and sums each iteration's
statistics over the ranks through the C layer's reduce hook (the binding
calls World.sum_in_place on views of the C buffers). The hook's wiring is
tested in one process with fake Worlds; the 2-rank runs (tests/mpi_child.py
under mpirun, skipped without mpi4py and mpirun) must give the tables of one
process to 1e-9."""

import numpy as np
import pytest

import mpi_child
from calign import _C, distributed, wordalign
from test_mpi import needs_mpi, run_child


def fitted_states(models, pairs, iterations):
    return {name: mpi_child.model_state(make().fit(pairs, iterations=iterations))
            for name, make in models}


def assert_same_state(got, expected, where):
    assert sorted(got) == sorted(expected), where
    for key, value in expected.items():
        if key.endswith(("row_start", "cols")):  # the table's word pairs: exactly
            np.testing.assert_array_equal(got[key], value, err_msg=f"{where}: {key}")
        elif key == "log_likelihoods":
            np.testing.assert_allclose(got[key], value, rtol=1e-9, atol=0,
                                       err_msg=f"{where}: {key}")
        else:
            np.testing.assert_allclose(got[key], value, rtol=0, atol=1e-9,
                                       err_msg=f"{where}: {key}")


@pytest.fixture
def fake_world(monkeypatch):
    """Installs a World as the process's (distributed.world())."""

    def install(world):
        monkeypatch.setattr(distributed, "_world", world)
        return world

    return install


class DoublingWorld(distributed.World):
    """Rank 0 of `size` ranks whose others hold copies of its block of the
    pairs: the sum over ranks is `size` times this rank's. Records the sizes
    of the buffers it is given."""

    def __init__(self, size=2):
        super().__init__()
        self.size = size
        self.sizes = []

    def sum_in_place(self, buffer, bucket_elements=None):
        assert buffer.dtype == np.float64 and buffer.ndim == 1
        assert buffer.flags.c_contiguous and buffer.flags.writeable
        self.sizes.append(buffer.size)
        buffer *= self.size
        return buffer


# ---- one process: the reduce hook's wiring -----------------------------------------------

def test_one_process_trains_on_the_whole_corpus_without_a_reducer():
    arrays = tuple(np.arange(3) for _ in range(4))
    assert distributed.world().size == 1
    shard, sum_in_place = wordalign.corpus.shard_of_this_rank(arrays)
    assert shard is arrays and sum_in_place is None


def test_world_blocks_cover_the_items_in_rank_order():
    blocks = []
    for rank in range(3):
        world = distributed.World()
        world.rank, world.size = rank, 3
        blocks.append(world.block(8))
    assert [list(b) for b in blocks] == [[0, 1], [2, 3, 4], [5, 6, 7]]


def test_pair_block_is_a_corpus_of_those_pairs():
    pairs = [(["a", "b"], ["x"]), (["c"], ["y", "z"]), (["a"], ["x", "x"])]
    vocabs = wordalign.corpus.Vocabulary(), wordalign.corpus.Vocabulary()
    arrays = wordalign.corpus.flatten(pairs, *vocabs)
    block = wordalign.corpus.pair_block(arrays, range(1, 3))
    expected = wordalign.corpus.flatten(pairs[1:], *vocabs, grow=False)
    for got, want in zip(block, expected):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["ibm1", "ibm1_vb", "ibm2", "hmm", "joint"])
def test_a_rank_summing_through_the_hook_trains_as_one_process(fake_world, name):
    """The corpus twice over on 2 ranks whose sums double rank 0's counts (the
    other rank's block is the same pairs): one process's model on it."""
    pairs = mpi_child.wordalign_corpus()[:60]
    models = [m for m in mpi_child.WORDALIGN_MODELS if m[0] == name]
    one = fitted_states(models, pairs + pairs, 3)[name]
    world = fake_world(DoublingWorld())
    two = fitted_states(models, pairs + pairs, 3)[name]
    assert_same_state(two, one, name)
    assert world.sizes  # the hook ran


def test_the_hook_sums_what_each_m_step_reads(fake_world):
    """Per iteration: the counts (one per table entry), then IBM's
    log-likelihood, distortion feature and target words (IBM2: and the model
    feature of each of the tension's 8 steps), the HMM's jump counts and
    log-likelihood."""
    pairs = mpi_child.wordalign_corpus()[:30]
    entries = {}
    for name, model, iterations in (("ibm1", wordalign.IBM1(), 2),
                                    ("ibm2", wordalign.IBM2(), 2),
                                    ("hmm", wordalign.HMM(max_jump=4, ibm1_iterations=1), 2)):
        world = fake_world(DoublingWorld())
        model.fit(pairs, iterations=iterations)
        n = len(model.table[1])
        entries[name] = (world.sizes, n)
    sizes, n = entries["ibm1"]
    assert sizes == [n, 3] * 2
    sizes, n = entries["ibm2"]
    assert sizes == ([n, 3] + [1] * 8) * 2
    sizes, n = entries["hmm"]
    assert sizes == [n, 3] + [n, 2 * 4 + 2] * 2  # 1 IBM1 iteration, then 2 of the HMM's


def test_a_rank_with_no_pairs_still_takes_part_in_every_sum(fake_world):
    """5 ranks, 2 pairs: rank 0's block is empty; it adds nothing (here the
    others add nothing either: the table stays the uniform start)."""
    pairs = mpi_child.wordalign_corpus()[:2]
    world = fake_world(DoublingWorld(size=5))
    assert len(world.block(len(pairs))) == 0
    for model in (wordalign.IBM2(), wordalign.HMM(ibm1_iterations=1)):
        model.fit(pairs, iterations=2)
        iterations = 3 if isinstance(model, wordalign.HMM) else 2  # the HMM's IBM1 one too
        assert model.log_likelihoods == [0.0] * iterations
        row_start, _, prob = model.table
        row_lengths = np.diff(row_start)
        np.testing.assert_array_equal(prob, np.repeat(1.0 / row_lengths, row_lengths))
    # 2 sums an iteration, none of the tension's steps: the ranks hold no target words
    assert len(world.sizes) == 2 * (2 + 3)


class FailingWorld(DoublingWorld):
    """Fails in its third sum, as an MPI error would."""

    def sum_in_place(self, buffer, bucket_elements=None):
        if len(self.sizes) == 2:
            raise ConnectionError("the other rank is gone")
        return super().sum_in_place(buffer)


@pytest.mark.parametrize("make", [wordalign.IBM2, wordalign.HMM, wordalign.JointHMM])
def test_a_failing_sum_stops_training_with_its_error(fake_world, make):
    fake_world(FailingWorld())
    with pytest.raises(ConnectionError, match="the other rank is gone"):
        make().fit(mpi_child.wordalign_corpus()[:20], iterations=2)


class KeepingWorld(DoublingWorld):
    """Keeps the arrays it is given: views of memory that training frees."""

    def sum_in_place(self, buffer, bucket_elements=None):
        self.kept = buffer
        return buffer


def test_a_sum_that_keeps_the_buffer_is_refused(fake_world):
    fake_world(KeepingWorld())
    with pytest.raises(RuntimeError, match="sum_in_place kept the array"):
        wordalign.IBM1().fit(mpi_child.wordalign_corpus()[:20], iterations=1)


def test_wa_train_refuses_a_sum_in_place_that_is_not_callable():
    model = wordalign.IBM1()
    vocabs = wordalign.corpus.Vocabulary(), wordalign.corpus.Vocabulary()
    arrays = wordalign.corpus.flatten([(["a"], ["x"])], *vocabs)
    _C.wa_start(model.c_model, *arrays, source_vocabulary_size=2, target_vocabulary_size=2)
    with pytest.raises(TypeError, match="sum_in_place must be a callable or None"):
        _C.wa_train(model.c_model, *arrays, iterations=1, sum_in_place=5)


# ---- two ranks ----------------------------------------------------------------------------

@needs_mpi
def test_two_ranks_fit_the_tables_of_one_process(tmp_path):
    """IBM1 (EM and variational Bayes), IBM2 both ways, HMM and JointHMM on
    2 ranks, each with its block of 301 pairs: one process's tables, tension,
    jumps and log-likelihoods to 1e-9; the two ranks' models identical."""
    run_child(2, "wordalign", tmp_path)
    expected = fitted_states(mpi_child.WORDALIGN_MODELS, mpi_child.wordalign_corpus(),
                             mpi_child.WORDALIGN_ITERATIONS)
    for name, state in expected.items():
        with np.load(tmp_path / f"{name}.npz") as saved:
            assert_same_state(dict(saved), state, name)
    digests = {path.read_text() for path in tmp_path.glob("wordalign-rank*.sha")}
    assert len(list(tmp_path.glob("wordalign-rank*.sha"))) == 2 and len(digests) == 1
