"""How an answer is scored against its label: one implementation for the answers table, the evaluation
and the training script.

    normalize_answer("  Red! ")  -> "red"
    is_correct("Red.", "red")    -> True
    is_correct("anything", None) -> None     (unlabelled: no verdict)

Normalisation: Unicode NFKC, lower case, every punctuation character (Unicode category P*) and all
whitespace removed. "left side" and "leftside" therefore match; the shapes answers are single words,
and multiple-choice items are scored by likelihood, not by text (pipeline/evaluate.py).
"""

from __future__ import annotations

import unicodedata
from typing import Optional, Sequence


def normalize_answer(text: object) -> str:
    """Lower-cased text without punctuation or whitespace; None is ''."""
    if text is None:
        return ""
    if not isinstance(text, str):
        raise ValueError(f"answer text must be a str or None, got {type(text).__name__}")
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(c for c in text if not c.isspace() and not unicodedata.category(c).startswith("P"))


def is_correct(answer: Optional[str], expected: Optional[str]) -> Optional[bool]:
    """True when the normalised answer equals the normalised label; None when there is no label."""
    if expected is None:
        return None
    return normalize_answer(answer) == normalize_answer(expected)


def agrees(answer: Optional[str], reference: Optional[str]) -> Optional[bool]:
    """Label-free agreement: the answer matches a reference answer (the same model's at full budget)."""
    if reference is None:
        return None
    return normalize_answer(answer) == normalize_answer(reference)


def object_recall(kept: Sequence[Sequence[int]], patches: Optional[Sequence[Sequence[int]]]) -> Optional[float]:
    """Share of an object's patches that were kept.

    kept: per frame, the kept positions in that frame's token grid. patches: [[frame, index], ...], the
    object's patches (None or empty: no object to recall, None). A patch in a frame beyond `kept` counts
    as not kept.
    """
    if not patches:
        return None
    sets = [set(int(k) for k in frame) for frame in kept]
    hit = sum(1 for frame, index in patches if int(frame) < len(sets) and int(index) in sets[int(frame)])
    return hit / len(patches)
