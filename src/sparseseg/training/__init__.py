"""Masked losses, schedules, samplers and the one training loop shared by all models."""
