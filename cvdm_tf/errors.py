"""Errors a user can fix: the CLI prints them as one line and exits with code 2."""


class InputError(ValueError):
    """Bad user input: a file, a folder, a config value. The message names the thing and the problem."""
