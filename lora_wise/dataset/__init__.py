"""LoRA-WiSE as a Hugging Face dataset: build parquet configs, load them, the card, the Hub,
the upstream import."""
