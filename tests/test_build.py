"""BUILD cannot rot: every Python file has a target, every dependency exists."""

import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", ".ci-venv", "__pycache__", ".pytest_cache", ".ruff_cache"}


def _python_files() -> set[str]:
    files = set()
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if any(part in SKIP_DIRS or part.startswith("bazel-") for part in rel.parts):
            continue
        files.add(rel.as_posix())
    return files


def _load_build() -> dict[str, dict]:
    """Evaluates BUILD as Starlark (a Python subset) with recording stubs."""
    targets: dict[str, dict] = {}

    def rule(kind):
        def record(name, **kwargs):
            assert name not in targets, f"BUILD defines target {name!r} twice"
            targets[name] = {"kind": kind, **kwargs}

        return record

    def pytest_test(name, src, deps=(), **kwargs):
        targets_kwargs = dict(kwargs, srcs=["tests/bazel_pytest_main.py", src])
        rule("py_test")(name, deps=[*deps, ":tests_conftest"], **targets_kwargs)

    namespace = {
        "load": lambda *args: None,
        "package": lambda **kwargs: None,
        "exports_files": lambda *args, **kwargs: None,
        "glob": lambda *args, **kwargs: [],
        "py_library": rule("py_library"),
        "py_binary": rule("py_binary"),
        "py_test": rule("py_test"),
        "pytest_test": pytest_test,
    }
    exec(compile((ROOT / "BUILD").read_text(), "BUILD", "exec"), namespace)  # noqa: S102
    return targets


def test_every_python_file_has_a_target():
    targets = _load_build()
    covered = {src for target in targets.values() for src in target.get("srcs", [])}
    missing = sorted(_python_files() - covered)
    assert not missing, f"Python files with no target in BUILD (add them): {missing}"


def test_every_src_exists():
    targets = _load_build()
    for name, target in targets.items():
        for src in target.get("srcs", []):
            assert (ROOT / src).is_file(), f"BUILD target {name!r} lists missing file {src!r}"


def test_every_test_file_is_a_py_test():
    targets = _load_build()
    tests = {
        src for target in targets.values() if target["kind"] == "py_test" for src in target["srcs"]
    }
    test_files = {f for f in _python_files() if pathlib.PurePosixPath(f).name.startswith("test_")}
    missing = sorted(test_files - tests)
    assert not missing, f"test files with no py_test target in BUILD: {missing}"


def test_every_dependency_is_defined():
    targets = _load_build()
    for name, target in targets.items():
        for dep in target.get("deps", []):
            assert dep.startswith(":"), f"{name!r}: only local deps are used, got {dep!r}"
            assert dep[1:] in targets, f"BUILD target {name!r} depends on undefined {dep!r}"
