"""Click command objects of the ``lora-wise`` CLI, one module per command; ``lora_wise.cli`` registers them."""
