"""Entry point for Bazel's py_test: runs pytest on the file given as argument."""

import sys

import pytest

if __name__ == "__main__":
    sys.exit(pytest.main(["--import-mode=importlib", *sys.argv[1:]]))
