"""The installed package's version, for every face that reports it."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("attention-encodings")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
