"""GPT-2's vocab.json and merges.txt, rebuilt from the tiktoken encoding a run tokenized with.

tiktoken keeps only ranks (token bytes -> id); transformers' GPT-2 tokenizer wants the vocabulary as printable
strings and the ordered merge list. Each merge is recovered by running BPE on a token's own bytes with only the
lower-ranked tokens allowed: a BPE vocabulary's token then ends as exactly the two pieces it was merged from,
so the list is GPT-2's own, one merge per token in rank order, and encodes as tiktoken does.
"""

from __future__ import annotations

import json

PRINTABLE_BYTES = (*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1))


def byte_characters() -> dict[int, str]:
    """GPT-2's byte -> character map: printable bytes stand for themselves, the rest (space, controls) take the
    characters from U+0100 on in byte order, so every token is a string without whitespace."""
    mapping = {byte: chr(byte) for byte in PRINTABLE_BYTES}
    others = [byte for byte in range(256) if byte not in mapping]
    mapping.update({byte: chr(256 + n) for n, byte in enumerate(others)})
    return mapping


def printable(token: bytes, chars: dict[int, str]) -> str:
    """A token's bytes as GPT-2 writes them in vocab.json and merges.txt (`chars` from byte_characters)."""
    return "".join(chars[byte] for byte in token)


def split_below(token: bytes, ranks: dict[bytes, int], limit: int) -> list[bytes]:
    """BPE of `token`'s bytes using only tokens ranked below `limit`: merge the lowest-ranked adjacent pair
    (the leftmost on a tie, as tiktoken does) until none is allowed."""
    parts = [bytes([byte]) for byte in token]
    while len(parts) > 1:
        rank, i = min((ranks.get(parts[i] + parts[i + 1], limit), i) for i in range(len(parts) - 1))
        if rank >= limit:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


def merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge that made each multi-byte token, in rank order."""
    found = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        pieces = split_below(token, ranks, rank)
        if len(pieces) != 2:
            raise ValueError(f"token {token!r} (rank {rank}) is not one merge of lower-ranked tokens")
        found.append((pieces[0], pieces[1]))
    return found


def tokenizer_files(encoding, seq_len: int) -> dict[str, str]:
    """vocab.json, merges.txt and tokenizer_config.json of a transformers GPT2Tokenizer equal to `encoding`
    (a tiktoken GPT-2 Encoding), keyed by file name."""
    special = {name: encoding.encode_single_token(name) for name in encoding.special_tokens_set}
    ranks = {encoding.decode_single_token_bytes(i): i for i in range(encoding.n_vocab) if i not in special.values()}
    chars = byte_characters()
    vocab = {**{printable(token, chars): i for token, i in ranks.items()}, **special}
    merge_lines = [f"{printable(left, chars)} {printable(right, chars)}" for left, right in merges(ranks)]
    eot = encoding.decode_single_token_bytes(encoding.eot_token).decode()  # <|endoftext|>, GPT-2's only special
    # no clean-up: tiktoken decodes bytes as they are, without joining " ." or " 's"
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": seq_len, "add_prefix_space": False,
              "clean_up_tokenization_spaces": False, "bos_token": eot, "eos_token": eot, "unk_token": eot}
    return {"vocab.json": json.dumps(vocab, ensure_ascii=False),
            "merges.txt": "\n".join(["#version: 0.2", *merge_lines]) + "\n",
            "tokenizer_config.json": json.dumps(config, indent=2) + "\n"}
