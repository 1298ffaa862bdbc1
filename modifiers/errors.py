"""Errors a user can act on."""


class AdapterError(Exception):
    """A LoRA modifier file is missing, malformed, or does not fit the loaded base model."""
