"""Runs one pytest file as a Bazel py_test."""

def pytest_test(name, src, deps = [], data = [], size = "medium", tags = []):
    native.py_test(
        name = name,
        srcs = ["tests/bazel_pytest_main.py", src],
        main = "tests/bazel_pytest_main.py",
        args = ["$(location %s)" % src],
        deps = deps + [":tests_conftest"],
        data = data,
        size = size,
        tags = tags,
    )
