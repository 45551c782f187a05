"""lalm-slu: fine-tuning audio LLMs for spoken language understanding under limited speech data."""

__version__ = "0.1.0"
