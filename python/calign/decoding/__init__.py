"""Decode-time alignment: a KV-cache session for searches, URIAL's in-context
prompt, best-of-N with a reward model, and RAIN's self-evaluating search."""

from calign.decoding.session import Session

__all__ = ["Session"]
