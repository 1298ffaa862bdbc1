"""Errors a user can act on. Each message names the file or the limit and says what to do."""


class ModelFileError(Exception):
    """A model file is missing, corrupt, truncated, or not a model llama.cpp can load."""


class ContextOverflowError(Exception):
    """The newest message alone does not fit in the model's context window."""


class ModelOutputError(Exception):
    """A model's output is not a number: weights damaged in a way its file's format does not show."""
