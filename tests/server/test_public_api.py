import re
import subprocess
import sys
from pathlib import Path

import export_server


def _isort_key(name: str) -> tuple[bool, bool, str]:
    # The order ruff (RUF022) keeps: CONSTANTS, then Classes, then functions, each alphabetical.
    return (not name.isupper(), not name[0].isupper(), name)


def test_all_is_sorted() -> None:
    assert export_server.__all__ == sorted(export_server.__all__, key=_isort_key)


def test_all_lists_every_public_name_and_each_has_a_home() -> None:
    from export_server import _HOMES

    assert sorted(_HOMES) == sorted(export_server.__all__)
    for name in export_server.__all__:
        value = getattr(export_server, name)
        assert getattr(value, "__module__", "export_server").startswith("export_server"), name


def test_every_public_exception_derives_from_the_base() -> None:
    for name in export_server.__all__:
        value = getattr(export_server, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, export_server.ExportServerError), name
            assert value.__doc__, f"{name} has no docstring"


def test_a_worker_imports_without_aiohttp_or_asyncio() -> None:
    probe = (
        "import sys, export_server._worker; "
        "print(sorted(m for m in ('aiohttp', 'asyncio') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_the_readme_lists_every_module_of_the_server_once() -> None:
    package = Path(export_server.__file__).parent
    readme = (package.parents[1] / "README.md").read_text()
    listing = readme.split("src/export_server/", 1)[1].split("\ntests/", 1)[0]
    listed = re.findall(r"^  (\S+\.py) +\S", listing, flags=re.MULTILINE)
    assert sorted(listed) == sorted(path.name for path in package.glob("*.py"))
