"""Singular-value spectra of LoRA layers (``compute``) and many models' spectra as one table (``table``)."""
