"""One module per training stage: its loss, evaluation and data kinds (spec §3)."""
