"""lora-scan: audit public LoRAs — read them, estimate their fine-tuning dataset size, report."""
