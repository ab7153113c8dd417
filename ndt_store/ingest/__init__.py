"""Readers of source formats: the study's Phase 1 JSON/CSV and model checkpoints."""
