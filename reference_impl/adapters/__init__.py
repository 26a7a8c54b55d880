"""Adapters: small trainable add-ons to a frozen model (LoRA for a brand's look)."""
