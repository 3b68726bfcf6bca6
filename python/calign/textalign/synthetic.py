"""A seeded synthetic corpus of cut-and-paste summaries with gold links.

Documents: 4-9 sentences of 8-18 tokens; a token is one of `function_words`
frequent words ("f3", 40% of tokens) or a content word ("w17") drawn from a
Zipf law, so the same word occurs at several document positions.

Each summary sentence is built from document sentences with the operations
Jing & McKeown list for human cut-and-paste summaries:
  sentence reduction        keep one or two runs of 2-7 words of a sentence
  sentence combination      (p 0.35) add a run from another sentence, joined
                            by a new connective
  syntactic transformation  (p 0.25) the runs of the sentence swap places
  lexical paraphrase        (p 0.08 per content word) "w17" becomes "w17p"
  reordering                the summary sentences follow a random order
  insertion                 (p 0.3 per run) one or two new words before the
                            run, half of them function words that also
                            occur in the document
Gold: each summary word's source position; a paraphrased word keeps its
source position as its gold link (a method matching tokens cannot find it);
connectives and inserted words are new (None)."""

import numpy as np

from calign import checks
from calign.textalign.gold import AlignedPair

CONNECTIVES = ("and", "while", "but", "as")


def synthetic_corpus(n_pairs, seed=0, vocab_size=300, function_words=12, min_sentences=4,
                     max_sentences=9, summary_sentences=3):
    """n_pairs AlignedPairs (document, summary, gold word links)."""
    n_pairs = checks.integer("n_pairs", n_pairs, 1, checks.C_INT_MAX)
    vocab_size = checks.integer("vocab_size", vocab_size, 10)
    function_words = checks.integer("function_words", function_words, 1)
    min_sentences = checks.integer("min_sentences", min_sentences, 2)
    max_sentences = checks.integer("max_sentences", max_sentences, min_sentences)
    summary_sentences = checks.integer("summary_sentences", summary_sentences, 1,
                                       min_sentences)
    rng = np.random.default_rng(checks.seed("seed", seed))
    zipf = 1.0 / np.arange(1, vocab_size + 1) ** 1.0
    zipf /= zipf.sum()

    def word():
        if rng.random() < 0.4:
            return f"f{int(rng.integers(function_words))}"
        return f"w{int(rng.choice(vocab_size, p=zipf))}"

    def run_of(sentence, length):
        length = min(length, len(sentence))
        start = int(rng.integers(0, len(sentence) - length + 1))
        return start, start + length

    pairs = []
    for _ in range(n_pairs):
        n_sent = int(rng.integers(min_sentences, max_sentences + 1))
        document = [[word() for _ in range(int(rng.integers(8, 19)))] for _ in range(n_sent)]
        sources = rng.choice(n_sent, size=summary_sentences, replace=False)
        summary, links = [], []
        for s in rng.permutation(sources):  # reordering
            s = int(s)
            runs = []  # (sentence, start, stop)
            # reduction: one run, or two runs in order with a gap between them
            if rng.random() < 0.5 and len(document[s]) >= 9:
                cut = int(rng.integers(4, len(document[s]) - 4))
                a, b = run_of(document[s][:cut], int(rng.integers(2, 6)))
                c, d = run_of(document[s][cut + 1:], int(rng.integers(2, 6)))
                runs += [(s, a, b), (s, cut + 1 + c, cut + 1 + d)]
            else:
                a, b = run_of(document[s], int(rng.integers(3, 8)))
                runs.append((s, a, b))
            if rng.random() < 0.25 and len(runs) == 2:  # syntactic transformation
                runs.reverse()
            if rng.random() < 0.35:  # combination
                other = int(rng.choice([t for t in range(n_sent) if t != s]))
                a, b = run_of(document[other], int(rng.integers(2, 6)))
                runs.append((None, CONNECTIVES[int(rng.integers(len(CONNECTIVES)))], None))
                runs.append((other, a, b))
            words, word_links = [], []
            for sentence, start, stop in runs:
                if sentence is None:  # a connective
                    words.append(start)
                    word_links.append(None)
                    continue
                if rng.random() < 0.3:  # insertion
                    for _ in range(int(rng.integers(1, 3))):
                        words.append(f"f{int(rng.integers(function_words))}"
                                     if rng.random() < 0.5 else f"n{int(rng.integers(50))}")
                        word_links.append(None)
                for w in range(start, stop):
                    token = document[sentence][w]
                    if token.startswith("w") and rng.random() < 0.08:  # paraphrase
                        token += "p"
                    words.append(token)
                    word_links.append((sentence, w))
            summary.append(words)
            links.append(word_links)
        pairs.append(AlignedPair(document, summary, links))
    return pairs
