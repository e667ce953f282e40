"""Ranking text by relevance to a query: Okapi BM25 over crudely stemmed words.

Reference: Robertson and Zaragoza, "The Probabilistic Relevance Framework: BM25 and Beyond" (2009).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from .split import sentences

STOPWORD_TEXT = (
    "a an and are as at be been by did do does for from had has have he her his how i if in into is it its "
    "me my no not of on or our she so than that the their them then there these they this to was we were "
    "what when where which who whom why will with you your"
)
STOPWORDS = frozenset(STOPWORD_TEXT.split())


def terms(text: str) -> list[str]:
    """Lower-cased words without stop words, crudely stemmed (completed, completes -> complet)."""
    out = []
    for word in re.findall(r"\w+", text.lower()):
        if word in STOPWORDS:
            continue
        for suffix in ("ing", "ed", "es", "s"):
            if word.endswith(suffix) and len(word) - len(suffix) >= 3:
                word = word[: -len(suffix)]
                break
        out.append(word)
    return out


def bm25_scores(query: str, documents: Sequence[str], *, k1: float = 1.5, b: float = 0.75) -> list[float]:
    """Okapi BM25 score of each document for the query's terms (0 when none occurs)."""
    docs = [Counter(terms(d)) for d in documents]
    lengths = [sum(d.values()) for d in docs]
    average = (sum(lengths) / len(docs) if docs else 0) or 1.0
    df = Counter(t for d in docs for t in d)
    wanted = set(terms(query))
    scores = []
    for doc, length in zip(docs, lengths):
        score = 0.0
        for term in wanted & doc.keys():
            idf = math.log((len(docs) - df[term] + 0.5) / (df[term] + 0.5) + 1)
            tf = doc[term]
            score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / average))
        scores.append(score)
    return scores


def supporting_sentences(answer: str, question: str, context: str, *, limit: int = 2) -> list[str]:
    """The context sentences that share the most (rare) words with the answer, in context order."""
    units = sentences(context)
    if not units or not terms(answer):
        return []
    by_answer = bm25_scores(answer, units)
    by_question = bm25_scores(question, units)
    ranked = sorted((i for i in range(len(units)) if by_answer[i] > 0), key=lambda i: -(by_answer[i] + 0.5 * by_question[i]))
    return [units[i] for i in sorted(ranked[:limit])]
