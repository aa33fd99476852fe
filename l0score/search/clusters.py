"""Near-identical search results share a cluster, so a top-N shows different hypotheses.

Rule (docs/search.md, "Diverse results"): going down the results best first, a result joins the
cluster of the first earlier cluster representative (its best member) that it nearly repeats, else
it starts a new cluster. B nearly repeats A when
  * B holds the same tokens as A in another order (same multiset), or
  * A and B have the same length and differ in one position only (one token swapped, whether for a
    look-alike or not), or
  * A and B decode to the same text up to case and whitespace (a look-alike tokenization).
Only representatives are compared, so clusters do not chain.
"""
from __future__ import annotations


def cluster_ids(seqs: list[list[int]], tokenizer=None) -> list[int]:
    """Cluster number of each sequence (given best first); clusters are numbered 0, 1, ... in order."""
    reps: list[tuple[list[int], tuple[int, ...], str | None]] = []
    out = []
    for seq in seqs:
        seq = [int(t) for t in seq]
        key = (sorted(seq), _text_key(tokenizer, seq))
        for n, (rep, rep_sorted, rep_text) in enumerate(reps):
            if _near(seq, key, rep, rep_sorted, rep_text):
                out.append(n)
                break
        else:
            reps.append((seq, key[0], key[1]))
            out.append(len(reps) - 1)
    return out


def _near(seq, key, rep, rep_sorted, rep_text) -> bool:
    if key[0] == rep_sorted:
        return True
    if len(seq) == len(rep) and sum(a != b for a, b in zip(seq, rep)) <= 1:
        return True
    return key[1] is not None and key[1] == rep_text


def _text_key(tokenizer, seq) -> str | None:
    if tokenizer is None:
        return None
    return "".join(tokenizer.decode(seq).lower().split())
