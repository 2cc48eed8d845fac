"""One exception family for every problem a user can cause.

Each message names the file, the tensor or module, and what was expected, so the CLI can print it
on one line (exit code 2) and the app can show it in an error box.
"""
from __future__ import annotations


class AtlasError(Exception):
    """Base of every user-facing error raised by the library."""


class AdapterFormatError(AtlasError):
    """A file or directory is not an adapter we can read, or its contents are inconsistent."""


class IncompatibleAdaptersError(AtlasError):
    """Adapters cannot be compared or merged together (different bases, no shared modules...)."""


class RecipeError(AtlasError):
    """A merge recipe is malformed, or an input no longer matches its recorded sha256."""


class ReviewError(AtlasError):
    """A review-store operation was refused (unknown proposal, bad decision...)."""


class ResourceLimitError(AtlasError):
    """An input would need more memory or time than the stated limit (the message gives both sizes)."""


class Cancelled(AtlasError):
    """The user stopped a long computation (a progress callback raised it); nothing was written."""


class EvaluationDataError(AtlasError):
    """A task data file (JSONL, mapping YAML) is unreadable or has a bad row; the message gives file:line."""


class ModelLoadError(AtlasError):
    """A model named for evaluation is not there, is not a model, or would need a download."""
