"""The version of medsr (one place; the package and the files it writes say it)."""

__version__ = "0.1.0"
