"""Fine-tuning: items and batches, the loop and its checkpoints, processes (FSDP2), run identity, the recipe."""
