"""Alignment of a human summary to its source document: which summary words
were cut from which document positions, and which summary sentences and
document sentences or clauses correspond.

    from calign import textalign
    positions = textalign.decompose(summary_words, document_sentences)
    textalign.fragments(positions)      # runs cut from one sentence, new runs
    textalign.align_sentences(summary_sentences, document_sentences, top_k=2)
    textalign.extract(summary_sentences, document_sentences)
    textalign.PhraseHMM().fit(pairs).align(pairs)

Methods: Jing & McKeown's HMM decomposition (Viterbi in C), Banko et al.'s
sentence alignment by cosine, Marcu's extract by greedy deletion, Daumé &
Marcu's phrase HMM (EM in C), a word-overlap baseline; a synthetic corpus
of cut-and-paste summaries and scores against gold links. The papers' texts
could not be read here: where the docstrings say "recollected" or
"calign's choice", the details are not the papers' own.
"""

from calign.textalign.decompose import DEFAULT_RULES, align_by_overlap, decompose, decompose_all
from calign.textalign.gold import AlignedPair, read_gold
from calign.textalign.phrase_hmm import PhraseHMM
from calign.textalign.scoring import (extract_scores, sentence_links, sentence_scores,
                                      word_scores)
from calign.textalign.similarity import Unit, align_sentences, extract
from calign.textalign.synthetic import synthetic_corpus
from calign.textalign.text import Fragment, fragments, split_sentences, tokenize

__all__ = ["DEFAULT_RULES", "AlignedPair", "Fragment", "PhraseHMM", "Unit", "align_by_overlap",
           "align_sentences", "decompose", "decompose_all", "extract", "extract_scores",
           "fragments", "read_gold", "sentence_links", "sentence_scores", "split_sentences",
           "synthetic_corpus", "tokenize", "word_scores"]
