"""Tokenizers: exact ids, round trips, and rebuilding from meta.json's dict."""

import json

import pytest

from optbench.data.tokenizers import from_meta, make_tokenizer
from optbench.errors import UserError


def test_gpt2_from_mirror_matches_reference_ids(gpt2_mirror):
    tok = make_tokenizer("gpt2", gpt2_mirror)
    assert tok.encode("Hello world") == [15496, 995]
    assert (tok.vocab_size, tok.eot) == (50257, 50256)
    assert tok.encode_batch(["Hello world", " world"]) == [[15496, 995], [995]]
    assert tok.decode([15496, 995, 50256]) == "Hello world<|endoftext|>"
    # Special tokens inside a document are text, never a real separator.
    assert 50256 not in tok.encode("a<|endoftext|>b")


def test_gpt2_rebuilds_from_meta(gpt2_mirror):
    tok = make_tokenizer("gpt2", gpt2_mirror)
    meta = json.loads(json.dumps(tok.to_meta()))
    assert from_meta(meta).encode("Hello world") == [15496, 995]


def test_char_vocabulary_is_sorted_distinct_characters():
    tok = make_tokenizer("char", corpus_chars="hello world")
    assert tok.vocab_size == 8 and tok.eot is None
    assert tok.encode("hello") == [3, 2, 4, 4, 5]  # ' ', d, e, h, l, o, r, w
    assert tok.decode(tok.encode("world hello")) == "world hello"
    rebuilt = from_meta(json.loads(json.dumps(tok.to_meta())))
    assert rebuilt.encode_batch(["lo", "he"]) == [[4, 5], [3, 2]]


def test_char_unknown_character_is_user_error():
    tok = make_tokenizer("char", corpus_chars="abc")
    with pytest.raises(UserError, match="'z' is not in the 3-character vocabulary"):
        tok.encode("abz")


def test_hf_tokenizer_from_file_and_folder(tmp_path, hf_tokenizer_json):
    path = hf_tokenizer_json(tmp_path / "tokenizer.json")
    for spec in (f"hf:{path}", f"hf:{tmp_path}"):
        tok = make_tokenizer(spec)
        assert tok.name == spec and tok.vocab_size == 8 and tok.eot == 1
        assert tok.encode("hello the cat") == [2, 4, 5]
        assert tok.encode_batch(["world", "dog"]) == [[3], [0]]
        rebuilt = from_meta(json.loads(json.dumps(tok.to_meta())))
        assert rebuilt.encode("hello world") == [2, 3] and rebuilt.eot == 1


@pytest.mark.parametrize("spec, expected", [
    ("gtp2", "unknown data.tokenizer 'gtp2' (closest: gpt2); valid: gpt2, char, hf:NAME, hf:PATH"),
    ("hf:/nowhere/tokenizer.json", "data.tokenizer 'hf:/nowhere/tokenizer.json': no tokenizer file at"),
    ("hf:not-a-cached-hub-tokenizer", "data.tokenizer 'hf:not-a-cached-hub-tokenizer': cannot load"),
])
def test_bad_tokenizer_spec_is_one_line_user_error(spec, expected):
    with pytest.raises(UserError) as error:
        make_tokenizer(spec)
    assert str(error.value).startswith(expected) and "\n" not in str(error.value)


def test_hub_name_is_read_offline_from_the_mirror(tmp_path, hf_tokenizer_json):
    """hf:NAME (s4s-stage1's hf:t5-base) finds <mirror>/tokenizers/NAME/tokenizer.json before the hub."""
    (tmp_path / "tokenizers" / "t5-base").mkdir(parents=True)
    hf_tokenizer_json(tmp_path / "tokenizers" / "t5-base" / "tokenizer.json")
    tok = make_tokenizer("hf:t5-base", tmp_path)
    assert tok.name == "hf:t5-base" and tok.vocab_size == 8 and tok.encode("hello the cat") == [2, 4, 5]
    assert from_meta(json.loads(json.dumps(tok.to_meta()))).encode("hello world") == [2, 3]


def test_hub_name_offline_says_what_to_download_and_where(tmp_path):
    with pytest.raises(UserError) as error:
        make_tokenizer("hf:t5-base", tmp_path)
    message = str(error.value)
    assert "\n" not in message and message.startswith("data.tokenizer 'hf:t5-base': cannot load 't5-base'")
    assert "download https://huggingface.co/t5-base/resolve/main/tokenizer.json" in message
    assert f"to {tmp_path / 'tokenizers' / 't5-base' / 'tokenizer.json'}" in message
