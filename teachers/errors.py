"""The one error type for bad input: entry points print it as a single line and exit 2."""


class ConfigError(ValueError):
    """A bad value in a config, a file or on the command line, found before any work starts."""
