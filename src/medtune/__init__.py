"""medtune: QLoRA fine-tuning of Qwen3 for medical consultation, and honest comparison of runs."""

__version__ = "0.1.0"
