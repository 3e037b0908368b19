"""The LoRA-WiSE dataset card template (README.md.j2), rendered by lora_wise.dataset.card."""
