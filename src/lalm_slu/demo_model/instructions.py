"""The demo model's transcription instruction: pretraining asks it, and the model card quotes it."""

TRANSCRIBE_INSTRUCTION = "Write down what is said."
