"""The audio LLM: loading, prompts and batches, audio frames, the forward and its loss, what trains, memory."""
