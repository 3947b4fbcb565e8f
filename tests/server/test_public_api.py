import export_server


def _isort_key(name: str) -> tuple[bool, bool, str]:
    # The order ruff (RUF022) keeps: CONSTANTS, then Classes, then functions, each alphabetical.
    return (not name.isupper(), not name[0].isupper(), name)


def test_all_is_sorted() -> None:
    assert export_server.__all__ == sorted(export_server.__all__, key=_isort_key)


def test_all_lists_every_public_name() -> None:
    public = {
        name
        for name, value in vars(export_server).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("export_server")
    }
    assert set(export_server.__all__) == public | {"CSV_HEADER", "REFERENCE_CATALOG"}
    for name in export_server.__all__:
        assert hasattr(export_server, name)
