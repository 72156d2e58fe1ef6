"""Errors a user can fix. The command line prints them as one line and exits with code 2."""


class UserInputError(ValueError):
    """Bad input: the message names the input and the fix."""
