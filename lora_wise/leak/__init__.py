"""The second leak: what a LoRA's weights give away about its training images (reconstruction attack)."""
