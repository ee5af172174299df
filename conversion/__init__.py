"""Offline conversion of model checkpoints from other inference formats into transformers folders."""
