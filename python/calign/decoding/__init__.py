"""Decode-time alignment: a KV-cache session for searches, URIAL's in-context
prompt, best-of-N with a reward model, and RAIN's self-evaluating search."""

from calign.decoding.best_of_n import BestOfN, best_of_n
from calign.decoding.rain import rain_generate
from calign.decoding.sampling import decode_until
from calign.decoding.session import Session
from calign.decoding.urial import URIAL_TEXT, urial_generate, urial_prompt

__all__ = ["BestOfN", "Session", "URIAL_TEXT", "best_of_n", "decode_until", "rain_generate",
           "urial_generate", "urial_prompt"]
