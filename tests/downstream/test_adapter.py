"""The lm-eval adapter against the model's own arithmetic: log-likelihoods of continuations (GPT-2 BPE and
characters, batched, the context cut from the left), rolling log-likelihoods over windows of seq_len (checked
against lm-eval's own window function), and greedy generation that stops at a stop string or its budget."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import SHARED_DATA, TEXT
from tests.downstream.helpers import SEQ_LEN, continuation_logprob, lm_eval, load_run, token_logprobs, train_run
from tests.required import missing

pytestmark = pytest.mark.xdist_group("downstream-adapter")  # one worker trains the two runs once

ATOL = 1e-5


@pytest.fixture(scope="module")
def char_run(tmp_path_factory) -> Path:
    return train_run(tmp_path_factory.mktemp("char"))


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory) -> Path:
    """GPT-2 BPE, whose merges across a context/continuation boundary make the encode-together-and-split rule
    matter; the ranks read from the offline mirror."""
    if not (SHARED_DATA / "tokenizers" / "gpt2.tiktoken").is_file():
        missing(f"no {SHARED_DATA / 'tokenizers' / 'gpt2.tiktoken'} for the offline GPT-2 tokenizer")
    return train_run(tmp_path_factory.mktemp("gpt2"), "data.tokenizer=gpt2", f"data.mirror={SHARED_DATA}",
                     "train.steps=4")


def adapter(run_dir: Path, batch_size: int = 3):
    lm_eval()
    from optbench.downstream.adapter import OptbenchLM

    model, tokenizer, vocab = load_run(run_dir)
    return OptbenchLM(model, tokenizer, SEQ_LEN, vocab, torch.device("cpu"), batch_size=batch_size)


def requests(kind: str, *arguments: tuple) -> list:
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, args, i) for i, args in enumerate(arguments)]


# (context, continuation) as lm-eval sends them, and as the independent computation takes them: a context's
# trailing space belongs to the continuation ("the quick " + "fox" is "the quick" + " fox").
CHAR_PAIRS = [
    (("the quick brown", " fox"), ("the quick brown", " fox")),
    (("pack my box with five", " dozen jugs"), ("pack my box with five", " dozen jugs")),
    (("the lazy ", "dog"), ("the lazy", " dog")),
    (("1 the", " quick brown fox jumps"), ("1 the", " quick brown fox jumps")),
]
GPT2_PAIRS = [
    (("The quick brown fox", " jumps over"), ("The quick brown fox", " jumps over")),
    (("Paris is the capital of", " France."), ("Paris is the capital of", " France.")),
    (("pack my box with five ", "dozen jugs"), ("pack my box with five", " dozen jugs")),
    (("it's 12345, they're", " 3.14!"), ("it's 12345, they're", " 3.14!")),
]


@pytest.mark.parametrize("run, pairs", [("char_run", CHAR_PAIRS), ("gpt2_run", GPT2_PAIRS)], ids=["char", "gpt2"])
def test_loglikelihood_is_the_models_logprob_of_the_continuation(run, pairs, request):
    run_dir = request.getfixturevalue(run)
    lm = adapter(run_dir)  # batches of 3 over 4 requests of different lengths: padding must not matter
    got = lm.loglikelihood(requests("loglikelihood", *(sent for sent, _ in pairs)))
    model, tokenizer, _ = load_run(run_dir)
    for (logprob, _), (_, (context, continuation)) in zip(got, pairs):
        assert logprob == pytest.approx(continuation_logprob(model, tokenizer, context, continuation), abs=ATOL)


def test_gpt2_continuation_tokens_come_from_the_joined_text(gpt2_run):
    """The context's own tokens, then the joined text's tokens after them; a context's trailing space goes with the
    continuation (" the", as GPT-2 saw it in training); an empty context is the end-of-text token."""
    lm = adapter(gpt2_run)
    model, tokenizer, _ = load_run(gpt2_run)
    assert lm.encode_pair("Paris is the capital of", " France.") == (tokenizer.encode("Paris is the capital of"),
                                                                     tokenizer.encode(" France."))
    assert lm.encode_pair("Paris is ", "the capital") == (tokenizer.encode("Paris is"),
                                                          tokenizer.encode(" the capital"))
    (logprob, _), = lm.loglikelihood(requests("loglikelihood", ("", "Hello world")))
    ids = tokenizer.encode("Hello world")
    expected = token_logprobs(model, [tokenizer.eot, *ids[:-1]]).gather(1, torch.tensor(ids)[:, None]).sum()
    assert logprob == pytest.approx(expected.item(), abs=ATOL)


def test_a_context_longer_than_seq_len_is_cut_from_the_left(char_run):
    context = TEXT[:149]  # 149 characters ("... with five"), over four times seq_len
    lm = adapter(char_run)
    model, tokenizer, _ = load_run(char_run)
    (logprob, greedy), = lm.loglikelihood(requests("loglikelihood", (context, " fox")))
    assert logprob == pytest.approx(continuation_logprob(model, tokenizer, context, " fox"), abs=ATOL)
    inputs = tokenizer.encode(context + " fox")[:-1][-SEQ_LEN:]
    chosen = token_logprobs(model, inputs)[-4:].argmax(-1).tolist()
    assert greedy == (chosen == tokenizer.encode(" fox"))


def test_rolling_loglikelihood_covers_each_token_once_in_seq_len_windows(char_run):
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    text = TEXT[:110]  # 110 tokens: windows of 32 predictions, the last one of 14 after a full 32-token context
    lm = adapter(char_run)
    model, tokenizer, _ = load_run(char_run)
    prefix = lm.prefix
    ids = tokenizer.encode(text)
    expected = 0.0
    for context, targets in map(make_disjoint_window, get_rolling_token_windows(ids, prefix, SEQ_LEN, 1)):
        inputs = (context + targets)[-(SEQ_LEN + 1):-1]
        logprobs = token_logprobs(model, inputs)[-len(targets):]
        expected += logprobs.gather(1, torch.tensor(targets)[:, None]).sum().item()
    short = TEXT[:20]
    short_ids = tokenizer.encode(short)
    short_expected = token_logprobs(model, [prefix, *short_ids[:-1]]).gather(1, torch.tensor(short_ids)[:, None])
    got = lm.loglikelihood_rolling(requests("loglikelihood_rolling", (text,), (short,)))
    assert got[0] == pytest.approx(expected, abs=ATOL)
    assert got[1] == pytest.approx(short_expected.sum().item(), abs=ATOL)


@torch.no_grad()
def greedy_text(model, tokenizer, context: str, n: int, vocab: int) -> str:
    """n greedy tokens after `context`, each from the last seq_len tokens, decoded."""
    ids = tokenizer.encode(context)
    start = len(ids)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids[-SEQ_LEN:]]))[0, -1, :vocab].argmax()))
    return tokenizer.decode(ids[start:])


def test_generate_until_stops_at_the_first_stop_string_or_the_budget(char_run):
    lm = adapter(char_run, batch_size=2)
    model, tokenizer, vocab = load_run(char_run)
    contexts = ["the quick brown", "1 the quick brown fox", TEXT[:100], "over the lazy d"]  # two of one length
    texts = [greedy_text(model, tokenizer, context, 12, vocab) for context in contexts]
    stops = [text[4:6] for text in texts]  # a stop string the greedy text holds after a few characters
    forwards = []
    hook = lm.model.register_forward_hook(lambda module, args, out: forwards.append(args[0].shape))
    asked = [(context, {"until": [stop, "zzz"], "max_gen_toks": 12}) for context, stop in zip(contexts, stops)]
    got = lm.generate_until(requests("generate_until", *asked))
    hook.remove()
    assert got == [text[:text.index(stop)] for text, stop in zip(texts, stops)]
    assert all(stop not in text for text, stop in zip(got, stops))
    # three batches (the two 15-character contexts together), each done once its rows have met their stop string
    # (by their 6th character) instead of running to the budget of 12
    assert len(forwards) <= 3 * 6 and all(shape[1] <= SEQ_LEN for shape in forwards)
    budget = lm.generate_until(requests("generate_until", (contexts[0], {"until": [], "max_gen_toks": 7})))
    assert budget == [texts[0][:7]]
