"""The package's public names: what `__all__` promises is there, sorted, and nothing private."""

from __future__ import annotations

import export_client


def test_all_is_sorted_and_complete() -> None:
    names = export_client.__all__
    assert names == sorted(names, key=lambda name: (not name.isupper(), name))
    for name in names:
        assert hasattr(export_client, name), name
        assert not name.startswith("_")


def test_every_public_exception_derives_from_the_base() -> None:
    for name in export_client.__all__:
        value = getattr(export_client, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, export_client.ExportClientError), name
            assert value.__doc__, f"{name} has no docstring"


def test_every_public_exception_pickles_whole() -> None:
    # A Dask task's error comes back to the client pickled: it must be the same error there.
    import pickle

    samples = {
        "ClusterError": ("no scheduler",),
        "CsvFormatError": ("no header",),
        "DownloadError": ("7", "it broke."),
        "DownloadFailedError": ("7", "it broke."),
        "ExportClientError": ("something",),
        "IncompleteDownloadError": ("7", "3 rows short."),
        "MalformedDownloadError": ("7", "a bare CR."),
        "MockServerError": ("did not start",),
        "Retryable": ("503",),
        "ServerResponseError": ("not JSON",),
        "ServerUnreachableError": ("http://x", "refused"),
        "UnknownExportError": ("huge", ["demo"]),
        "Unreachable": ("refused",),
    }
    public = {
        name
        for name in export_client.__all__
        if isinstance(getattr(export_client, name), type)
        and issubclass(getattr(export_client, name), Exception)
    }
    assert public == set(samples)
    for name, arguments in samples.items():
        error = getattr(export_client, name)(*arguments)
        error.note = "kept"
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert (str(copy), vars(copy)) == (str(error), vars(error))


def test_every_public_name_is_importable_lazily_from_its_home() -> None:
    from export_client import _HOMES

    assert sorted(_HOMES) == sorted(export_client.__all__)


def test_the_counting_core_imports_without_the_network_stack() -> None:
    import subprocess
    import sys

    probe = "import sys, export_client._counting; print('aiohttp' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
