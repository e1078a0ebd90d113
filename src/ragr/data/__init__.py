"""Training and evaluation data: validated JSONL readers, per-epoch sampling and collation."""
