"""Scores of generated text against references, as the E2E challenge (the prefix-tuning paper's
table-to-text benchmark) reports them. Both are corpus-level, on a 0-100 scale, and computed by
sacrebleu with its defaults, so that they match what others compute with it.

BLEU  (Papineni et al., 2002) the geometric mean of the 1- to 4-gram precisions of the hypotheses,
      pooled over the whole corpus (not averaged per sentence), times a brevity penalty when the
      hypotheses are shorter than their references. A hypothesis n-gram is matched up to the most
      times it occurs in any one of its references, so several references per hypothesis reward
      each of the ways a sentence may be written. Words come from sacrebleu's "13a" tokenizer
      (that of the mteval-v13a script the E2E evaluation uses).
chrF  (Popovic, 2015) an F-score over character 1- to 6-grams (spaces removed), recall weighted
      more than precision (beta 2): kinder than BLEU to a near-miss word ("restaurants" for
      "restaurant"). With several references each hypothesis is scored against its best one.
"""

from ..errors import MiniPeftError


def text_scores(hypotheses, references):
    """{"bleu": float, "chrf": float} of hypotheses [N strings] against references [N lists of
    strings]: references[i] holds hypothesis i's own references, one or more (their numbers may
    differ from one hypothesis to the next)."""
    _check_texts(hypotheses, references)
    try:
        import sacrebleu
    except ImportError:
        raise MiniPeftError("text_scores needs sacrebleu: pip install 'minipeft[eval]'") from None
    # sacrebleu takes reference streams: stream k holds every hypothesis's k-th reference, None
    # (which it skips) where a hypothesis has fewer than k + 1
    n_streams = max(len(refs) for refs in references)
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(n_streams)]
    return {"bleu": sacrebleu.corpus_bleu(hypotheses, streams).score,
            "chrf": sacrebleu.corpus_chrf(hypotheses, streams).score}


def _check_texts(hypotheses, references):
    for name, x in (("hypotheses", hypotheses), ("references", references)):
        if not isinstance(x, (list, tuple)):
            raise MiniPeftError(f"{name} must be a list, got {type(x).__name__}")
    if not hypotheses:
        raise MiniPeftError("hypotheses is empty: nothing to score")
    if len(hypotheses) != len(references):
        raise MiniPeftError(f"{len(hypotheses)} hypotheses but {len(references)} lists of references; give one list per hypothesis")
    for i, (hyp, refs) in enumerate(zip(hypotheses, references)):
        if not isinstance(hyp, str):
            raise MiniPeftError(f"hypotheses[{i}] must be a string, got {type(hyp).__name__}")
        if not isinstance(refs, (list, tuple)):
            hint = " (wrap a single reference in a list)" if isinstance(refs, str) else ""
            raise MiniPeftError(f"references[{i}] must be a list of strings, got {type(refs).__name__}{hint}")
        if not refs:
            raise MiniPeftError(f"references[{i}] is empty; every hypothesis needs at least one reference")
        if not all(isinstance(r, str) for r in refs):
            raise MiniPeftError(f"references[{i}] must hold strings only, got {[type(r).__name__ for r in refs]}")
