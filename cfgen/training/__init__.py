"""Training: `finetune` (PRISM Algorithm 1: only the UNet trains)."""
