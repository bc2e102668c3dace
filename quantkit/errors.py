"""quantkit's own error types. Every message is one line that names the file or tensor and what to do."""


class QuantkitError(Exception):
    """A user-facing failure; the CLI prints its message alone, without a traceback."""


class InputError(QuantkitError):
    """The model, recipe, text or options given to quantkit are wrong or unreadable."""


class UnsupportedError(QuantkitError):
    """The input is valid but quantkit cannot handle it (architecture, option combination)."""


class OutputExistsError(QuantkitError):
    """The output path exists and --force was not given."""


class HubError(QuantkitError):
    """Talking to the Hub failed in a way a retry did not fix."""
