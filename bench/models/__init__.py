"""Models: backbones, LoRA adapters, the hub, scorer LMs, the victim and its cache, fine-tuning and prediction,
threads and seeds (see docs/architecture.md)."""
