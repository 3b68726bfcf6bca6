"""Daumé & Marcu (EMNLP 2004)'s phrase-based HMM for document/abstract
alignment, simplified; EM and Viterbi in C (csrc/textalign/phrase_hmm.c).

The paper's text could not be read. What is kept: the summary is cut into
phrases, each aligned to a document phrase or to a null "generated" state;
the transitions are a jump distribution over the document distance from the
end of the last aligned phrase (clipped to +-max_jump); everything is learned
by unsupervised EM and decoded by Viterbi. What is simplified (calign's
choices): a summary phrase aligns to a document span of the SAME length
inside one sentence (no phrase-to-phrase rewrites of other lengths); a
phrase length distribution; the word rewrite model is
e(s | d) = identity [s = d] + (1 - identity) rewrite(s) (identity and a
rewrite unigram learned by EM, no stems, WordNet or word-pair table); the
null state emits one word at a time from a learned unigram; the jump from
the start counts from document index 0; every expected count gets
`smoothing` added."""

import numpy as np

from calign import _C, checks
from calign.textalign.text import Fragment, check_pairs, normalise

MAX_PHRASE = 16  # the C kernels' limits
MAX_JUMP = 64
UNSEEN_SUMMARY, UNSEEN_DOCUMENT = 0, 1  # ids of tokens unseen in fit(): never equal


class PhraseHMM:
    """Phrase alignment of summaries to their documents, trained without
    labels. pairs are (summary_words, document_sentences): the whole summary
    as one token list (Daumé & Marcu align the full abstract) and the
    document as token lists.

        model = PhraseHMM().fit(pairs, iterations=5)
        positions = model.align(pairs)      # per pair: (sentence, word) or None
        phrases = model.phrases(pairs)      # per pair: Fragments

    Starting values: p_null 0.2, identity 0.9 (a copied word is most likely
    itself), uniform lengths, jumps, rewrite and generate."""

    def __init__(self, max_phrase_length=4, max_jump=3, p_null=0.2, identity=0.9,
                 smoothing=0.01, lowercase=True):
        self.max_phrase_length = checks.integer("max_phrase_length", max_phrase_length, 1,
                                                MAX_PHRASE)
        self.max_jump = checks.integer("max_jump", max_jump, 0, MAX_JUMP)
        self.p_null = checks.real("p_null", p_null, 0.0, 1.0, open_low=True, open_high=True)
        self.identity = checks.real("identity", identity, 0.0, 1.0, open_low=True,
                                    open_high=True)
        self.smoothing = checks.real("smoothing", smoothing, 0.0, 1e6, open_low=True)
        self.lowercase = checks.flag("lowercase", lowercase)
        self.start = (self.p_null, self.identity)
        self.length = np.ones(self.max_phrase_length)
        self.jump = np.ones(2 * self.max_jump + 1)
        self.vocabulary = None
        self.rewrite = self.generate = None
        self.log_likelihoods = []

    def _arrays(self, pairs, grow):
        """The pairs as ta_phrase_* take them; new tokens get ids when grow."""
        ids = self.vocabulary
        sum_ids, doc_ids, doc_sent, sum_off, doc_off = [], [], [], [0], [0]
        for summary, document in pairs:
            tokens = normalise(summary, self.lowercase)
            doc_tokens = [normalise(s, self.lowercase) for s in document]
            if grow:
                for t in tokens + [t for s in doc_tokens for t in s]:
                    ids.setdefault(t, len(ids) + 2)
            sum_ids += [ids.get(t, UNSEEN_SUMMARY) for t in tokens]
            for s, sentence in enumerate(doc_tokens):
                doc_ids += [ids.get(t, UNSEEN_DOCUMENT) for t in sentence]
                doc_sent += [s] * len(sentence)
            sum_off.append(len(sum_ids))
            doc_off.append(len(doc_ids))
        return (np.asarray(sum_ids, np.int64), np.asarray(sum_off, np.int64),
                np.asarray(doc_ids, np.int64), np.asarray(doc_off, np.int64),
                np.asarray(doc_sent, np.int64))

    def _model(self):
        return dict(length=self.length, jump=self.jump, rewrite=self.rewrite,
                    generate=self.generate, p_null=self.p_null, identity=self.identity)

    def fit(self, pairs, iterations=5):
        """EM from the starting values over the pairs; log_likelihoods holds
        each iteration's corpus log-likelihood (before its update)."""
        pairs = check_pairs(pairs)
        iterations = checks.integer("iterations", iterations, 0, checks.C_INT_MAX)
        self.vocabulary = {}
        arrays = self._arrays(pairs, grow=True)
        size = len(self.vocabulary) + 2
        self.p_null, self.identity = self.start
        self.length = np.ones(self.max_phrase_length)
        self.jump = np.ones(2 * self.max_jump + 1)
        self.rewrite, self.generate = np.ones(size), np.ones(size)
        self.p_null, self.identity, self.log_likelihoods = _C.ta_phrase_em(
            *arrays, **self._model(), iterations=iterations, smoothing=self.smoothing)
        return self

    def _decode(self, pairs):
        if self.vocabulary is None:
            raise ValueError("the model is not trained: call fit() first")
        pairs = check_pairs(pairs)
        arrays = self._arrays(pairs, grow=False)
        best, phrase = _C.ta_phrase_viterbi(*arrays, **self._model())
        sum_off, doc_off, doc_sent = arrays[1], arrays[3], arrays[4]
        starts = [np.concatenate([[0], np.cumsum([len(s) for s in document])])
                  for _, document in pairs]
        decoded = []
        for k in range(len(pairs)):
            positions = []
            for t in range(sum_off[k], sum_off[k + 1]):
                if best[t] < 0:
                    positions.append(None)
                else:
                    s = int(doc_sent[doc_off[k] + best[t]])
                    positions.append((s, int(best[t] - starts[k][s])))
            decoded.append((positions, phrase[sum_off[k]:sum_off[k + 1]]))
        return decoded

    def align(self, pairs):
        """For each pair, each summary word's (sentence, word) document
        position on the Viterbi path, or None when generated."""
        return [positions for positions, _ in self._decode(pairs)]

    def phrases(self, pairs):
        """For each pair, the Viterbi phrases as Fragments (sentence and word
        None for a generated word)."""
        result = []
        for positions, phrase in self._decode(pairs):
            runs = []
            for j, position in enumerate(positions):
                if runs and phrase[j] == phrase[j - 1]:
                    runs[-1] = runs[-1]._replace(stop=j + 1)
                else:
                    runs.append(Fragment(j, j + 1, *(position or (None, None))))
            result.append(runs)
        return result
