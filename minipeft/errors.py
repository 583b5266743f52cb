"""The one exception type minipeft raises for bad files and bad input."""


class MiniPeftError(ValueError):
    """Something the user gave (a file, a config, a tensor, an argument) is not what minipeft expects.

    The message names what is wrong, what was expected and, where it helps, how to fix it.
    It subclasses ValueError so that `except ValueError` callers keep working.
    """
