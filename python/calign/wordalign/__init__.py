"""Word alignment: IBM Models 1 and 2 and the HMM aligner with EM in C,
symmetrisation, AER, and optimal-transport alignment of embeddings.

    from calign import wordalign
    forward = wordalign.IBM2().fit(pairs, iterations=5)
    reverse = wordalign.IBM2(reverse=True).fit(pairs, iterations=5)
    links = [wordalign.symmetrize(f, r, "grow-diag-final-and")
             for f, r in zip(forward.align(pairs), reverse.align(pairs))]
"""

from calign.wordalign.corpus import read_fast_align
from calign.wordalign.evaluation import (aer, f1, format_pharaoh, precision, read_pharaoh, recall,
                                         write_pharaoh)
from calign.wordalign.hmm import HMM
from calign.wordalign.ibm import IBM1, IBM2
from calign.wordalign.joint import JointHMM
from calign.wordalign.optimal_transport import OTAligner, transport_plan
from calign.wordalign.symmetrize import symmetrize
from calign.wordalign.synthetic import synthetic_corpus

__all__ = ["HMM", "IBM1", "IBM2", "JointHMM", "OTAligner", "transport_plan", "aer", "f1",
           "format_pharaoh", "precision", "read_fast_align",
           "read_pharaoh", "recall", "symmetrize", "synthetic_corpus", "write_pharaoh"]
