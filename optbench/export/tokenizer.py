"""The tokenizer files of an export, by the kind of tokenizer the run's data was prepared with.

  gpt2   vocab.json, merges.txt, tokenizer_config.json: transformers' GPT2Tokenizer, rebuilt from the tiktoken
         ranks the run used (gpt2_bpe.py)
  hf     tokenizer.json as the run kept it, and a tokenizer_config.json naming PreTrainedTokenizerFast
  char   no transformers tokenizer splits text into single characters with this vocabulary and decodes
         without separators, so optbench_tokenizer.json lists the characters by id instead

optbench encodes without special tokens (`<|endoftext|>` typed in the text is plain text, and no BOS is added);
a transformers tokenizer treats special tokens as special, so encode with add_special_tokens=False and
text free of them to get the run's ids.
"""

from __future__ import annotations

import json

from optbench.data.tokenizers import Tokenizer
from optbench.export import gpt2_bpe

CHAR_FILE = "optbench_tokenizer.json"


def tokenizer_files(tokenizer: Tokenizer, seq_len: int) -> tuple[dict[str, str], str]:
    """(file name -> text, a line saying what was written) for `tokenizer`, the run's."""
    meta = tokenizer.to_meta()
    if meta["kind"] == "gpt2":
        return gpt2_bpe.tokenizer_files(tokenizer.enc, seq_len), "GPT-2 tokenizer files (vocab.json, merges.txt)"
    if meta["kind"] == "hf":
        return hf_files(meta["json"], tokenizer, seq_len), "the run's tokenizer.json"
    note = (f"no transformers tokenizer for a char vocabulary: {CHAR_FILE} lists its {tokenizer.vocab_size} "
            "characters by id instead")
    return {CHAR_FILE: char_file(meta["chars"])}, note


def hf_files(tokenizer_json: str, tokenizer: Tokenizer, seq_len: int) -> dict[str, str]:
    """A `tokenizers` library tokenizer as transformers loads it: its own JSON and a config naming the class."""
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": seq_len}
    if tokenizer.eot is not None:
        config["eos_token"] = tokenizer.decode([tokenizer.eot])
    return {"tokenizer.json": tokenizer_json, "tokenizer_config.json": json.dumps(config, indent=2) + "\n"}


def char_file(chars: str) -> str:
    """optbench_tokenizer.json: id i is the character vocab[i]; text is encoded one character at a time."""
    return json.dumps({"kind": "char", "vocab": list(chars),
                       "encode": "one id per character: the character's index in vocab",
                       "decode": "concatenate vocab[id] for each id"}, ensure_ascii=False, indent=1) + "\n"
