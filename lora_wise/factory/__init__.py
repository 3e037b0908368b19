"""The benchmark factory: grids of training jobs, image pools, backbones, batched LoRA training,
and the one on-disk format of the snapshots it writes."""
