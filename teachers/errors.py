"""The one error type for bad input: entry points print it as a single line and exit 2."""


class ConfigError(ValueError):
    """A bad value in a config, a file or on the command line, found before any work starts."""


class TrainingStopped(RuntimeError):
    """A run that stopped on purpose (non-finite training, preemption); the CLI prints one line and exits."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
