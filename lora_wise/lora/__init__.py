"""Reading LoRA files: every common format into one ``LoraWeights``.

``safetensors_io`` checks untrusted bytes, ``formats/`` maps each family's keys to canonical
diffusers module paths, ``metadata`` parses what the file declares about its training,
``fingerprint`` names the base model, and ``reader.read_lora`` puts them together.
"""
