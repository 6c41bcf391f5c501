"""A run's model as a Hugging Face transformers folder: one file per family (gpt2.py, llama.py) maps optbench's
parameters onto transformers' class, tokenizer.py writes the tokenizer files, run.py reads the run and writes."""

from optbench.export.run import export_run

__all__ = ["export_run"]
