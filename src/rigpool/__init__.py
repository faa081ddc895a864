"""rigpool: pool idle GPUs into one OpenAI-compatible inference network."""

__version__ = "0.1.0"
