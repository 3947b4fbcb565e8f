"""Tests for the counting core: header layout, fast and exact paths, whole downloads."""

from __future__ import annotations

import csv
import itertools
import pickle
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from export_client import _pure
from export_client._body import BodyCount, BodyReader, count_body, count_end
from export_client._counting import BlockCount, count_block
from export_client._exceptions import CsvFormatError
from export_client._layout import CsvLayout
from export_client._pure import _count_exact, _count_fast

# Every test here runs on both cores: the compiled kernel and the pure-Python fallback.
pytestmark = pytest.mark.usefixtures("counting_core")

HEADER = b"patient_id,event_time,event_type,value\n"
LAYOUT = CsvLayout(field_count=4, patient_index=0, event_type_index=2)


def oracle(body: bytes) -> tuple[dict[tuple[str, str], int], int, int]:
    """Count a body the plain way: one csv.reader over its lines, split at "\\n" only."""
    text = body.decode("utf-8").removeprefix("\ufeff")
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    reader = csv.reader(line for line in lines if line)
    header: list[str] | None = None
    pairs: Counter[tuple[str, str]] = Counter()
    rows = malformed = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error:  # csv skips the rest of that line and reads on
            rows += 1
            malformed += 1
            continue
        if not row:
            continue
        if header is None:
            header = [name.strip() for name in row]
            patient, event_type = header.index("patient_id"), header.index("event_type")
            continue
        rows += 1
        if len(row) == len(header) and row[patient] and row[event_type]:
            pairs[(row[patient], row[event_type])] += 1
        else:
            malformed += 1
    return dict(pairs), rows, malformed


@dataclass(frozen=True)
class Counted:
    """What a whole body counts to, with the values decoded, as the tests compare it."""

    pairs: dict[tuple[str, str], int]
    rows: int
    malformed: int
    malformed_examples: tuple[str, ...] = ()

    @classmethod
    def of(cls, body: BodyCount) -> Counted:
        counts = body.counts
        examples = tuple(counts.malformed_examples)
        return cls(counts.decoded_pairs(), counts.rows, counts.malformed, examples)


def count(chunks: Sequence[bytes], *, max_line_bytes: int = 1 << 20) -> Counted:
    return Counted.of(count_body(chunks, max_line_bytes=max_line_bytes))


def as_tuple(result: Counted) -> tuple[dict[tuple[str, str], int], int, int]:
    return dict(result.pairs), result.rows, result.malformed


def reference_lines(rows: int) -> bytes:
    types = ["heart_rate", "spo2"]
    return b"".join(
        f"S00{i % 6 + 1},2025-08-26T00:00:{i % 60:02d}.{i:06d}Z,{types[i % 5 % 2]},{i}\n".encode()
        for i in range(rows)
    )


# Header and layout


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"patient_id,event_time,event_type,value\n", (4, 0, 2)),
        (b"event_type,value,patient_id\n", (3, 2, 0)),
        (b"a,patient_id,b,c,event_type,d\r\n", (6, 1, 4)),
        (b"\xef\xbb\xbfpatient_id,event_type", (2, 0, 1)),
        (b'"patient_id","event,time","event_type"\n', (3, 0, 2)),
        (b" patient_id , event_type \n", (2, 0, 1)),
    ],
)
def test_layout_from_header(header: bytes, expected: tuple[int, int, int]) -> None:
    layout = CsvLayout.from_header(header)
    assert (layout.field_count, layout.patient_index, layout.event_type_index) == expected


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"event_time,event_type,value\n", "no 'patient_id' column"),
        (b"patient_id,event_time,value\n", "no 'event_type' column"),
        (b"patient,type\n", "no 'patient_id' column"),
        (b"patient_id,event_type,patient_id\n", "more than one 'patient_id'"),
        (b"\n", "not a single CSV record"),
    ],
)
def test_layout_errors(header: bytes, message: str) -> None:
    with pytest.raises(CsvFormatError, match=message):
        CsvLayout.from_header(header)


@pytest.mark.parametrize(
    "header",
    [
        b"value,event_type,event_time,patient_id\n",
        b"x,patient_id,event_time,event_type,value,y\n",
        b"patient_id,event_time,event_type,value\r\n",
        b"\xef\xbb\xbfpatient_id,event_time,event_type,value\n",
        b'"patient_id","event_time","event_type","value"\n',
        b'"patient_id","event\ntime","event_type","value"\n',
    ],
)
def test_header_variants_in_a_body(header: bytes) -> None:
    text = header.decode().removeprefix("\ufeff").rstrip("\r\n")
    names = next(csv.reader([text.replace("\n", " ")]))
    names = [name.strip() for name in names]
    rows = [
        {"patient_id": "P1", "event_type": "a"},
        {"patient_id": "P2", "event_type": "b"},
        {"patient_id": "P1", "event_type": "a"},
    ]
    lines = [",".join(row.get(name, "1") for name in names) + "\n" for row in rows]
    body = header + "".join(lines).encode()
    expected = ({("P1", "a"): 2, ("P2", "b"): 1}, 3, 0)
    assert as_tuple(count([body])) == expected
    assert as_tuple(count([body[i : i + 1] for i in range(len(body))])) == expected


def test_missing_column_in_body_raises() -> None:
    with pytest.raises(CsvFormatError, match="patient_id"):
        count([b"patient,event_time,event_type\nP1,t,a\n"])


@pytest.mark.parametrize("chunks", [[], [b""], [b"", b""], [b"\n\n"], [b"\xef\xbb\xbf"]])
def test_an_empty_body_is_incomplete(chunks: list[bytes]) -> None:
    body = count_body(chunks)
    assert body.layout is None
    assert body.incomplete is not None
    assert "empty" in body.incomplete


@pytest.mark.parametrize("cut", [b"patient_id,event_ti", b"\n\npatient"])
def test_a_body_ending_inside_its_header_is_incomplete(cut: bytes) -> None:
    assert count_body([cut]).incomplete == "the body ended inside its header line"


def test_a_terminated_header_without_the_columns_is_a_format_error() -> None:
    with pytest.raises(CsvFormatError, match="no 'event_type' column"):
        BodyReader().feed(b"patient_id,event_ti\n")


@pytest.mark.parametrize(
    "body",
    [
        HEADER + b"P1,t,a,1\nP2,t,b",  # cut inside the value's field
        HEADER + b"P1,t,a,1\nP2,2025-08-2",
        HEADER + b"P1,t,a,1\nP",
        HEADER + b'P1,t,a,1\n"P2,t',  # cut inside a quoted field
    ],
)
def test_a_body_ending_inside_a_row_is_incomplete(body: bytes) -> None:
    for chunks in ([body], [body[i : i + 3] for i in range(0, len(body), 3)]):
        incomplete = count_body(chunks).incomplete
        assert incomplete is not None
        assert incomplete.startswith("the body ended inside a row")


@pytest.mark.parametrize(
    "body",
    [
        HEADER + b"P1,t,a,1\nP2,t,b,2",  # a complete last row without its line end
        HEADER + b"P1,t,a,1\nP2,t,b,2\r",
        HEADER + b"P1,t,a,1\n",
        HEADER + b"P1,t,a,1\n\n",
        HEADER + b"bad\nP1,t,a,1\n",  # a malformed row that is not the last is just malformed
        HEADER.rstrip(b"\n"),
    ],
)
def test_a_whole_body_is_not_incomplete(body: bytes) -> None:
    assert count_body([body]).incomplete is None


@pytest.mark.parametrize("body", [b"patient_id,event_type\rP1,a\rP2,b\r", b"h\rx"])
def test_cr_only_line_ends_are_named(body: bytes) -> None:
    reader = BodyReader()
    reader.feed(body)
    with pytest.raises(CsvFormatError, match="bare carriage return"):
        reader.finish()


def test_cr_only_line_ends_are_named_when_too_long() -> None:
    reader = BodyReader(max_line_bytes=100)
    with pytest.raises(CsvFormatError, match="bare carriage return"):
        reader.feed(b"patient_id,event_type\r" + b"P1,a\r" * 50)


def test_blank_lines_are_counted_apart_from_rows() -> None:
    counts = count_body([HEADER + b"\n\nP1,t,a,1\n\r\n\n\nP2,t,b,2\n\n"]).counts
    assert (counts.rows, counts.blank_lines) == (2, 6)


def test_many_blank_lines_before_the_header_cost_linear_time() -> None:
    body = count_body([b"\n" * 5_000_000 + HEADER + b"P1,t,a,1\n"])
    assert body.layout == LAYOUT
    assert body.counts.rows == 1


@pytest.mark.parametrize("body", [HEADER, HEADER.rstrip(b"\n"), HEADER + b"\n\n", b"\n" + HEADER])
def test_header_only_is_zero_rows(body: bytes) -> None:
    counted = count_body([body])
    assert counted.layout == LAYOUT
    assert Counted.of(counted) == Counted(pairs={}, rows=0, malformed=0)


def test_bom_split_across_chunks() -> None:
    body = b"\xef\xbb\xbf" + HEADER + b"P1,t,a,1\n"
    expected = ({("P1", "a"): 1}, 1, 0)
    assert as_tuple(count([body[:1], body[1:2], body[2:4], body[4:]])) == expected


# Rows: valid, malformed, quoted


def test_reference_rows() -> None:
    body = HEADER + reference_lines(1000)
    result = count([body])
    assert result.rows == 1000
    assert result.malformed == 0
    assert sum(result.pairs.values()) == 1000
    assert result.pairs[("S001", "heart_rate")] == oracle(body)[0][("S001", "heart_rate")]


@pytest.mark.parametrize(
    "line",
    [
        b"P1,t,a",  # too few fields
        b"P1,t,a,1,extra",  # too many fields
        b",t,a,1",  # empty patient id
        b"P1,t,,1",  # empty event type
        b"P1",
        b" ",
        b'"",t,a,1',  # empty after unquoting
        b"P1,t\ra,1",  # stray carriage return
    ],
)
def test_malformed_rows(line: bytes) -> None:
    body = HEADER + b"P1,t,a,1\n" + line + b"\nP2,t,b,2\n"
    result = count([body])
    assert result.pairs == {("P1", "a"): 1, ("P2", "b"): 1}
    assert (result.rows, result.malformed) == (3, 1)
    assert result.malformed_examples == (line.decode(),)


def test_malformed_examples_are_capped_and_truncated() -> None:
    bad = [f"bad{i}".encode() for i in range(7)]
    long_line = b"L" * 300 + b",x"
    body = HEADER + b"\n".join([long_line, *bad]) + b"\nP1,t,a,1\n"
    result = count([body[:50], body[50:]])
    assert (result.rows, result.malformed) == (9, 8)
    assert result.malformed_examples == ("L" * 200 + "...", "bad0", "bad1", "bad2", "bad3")


def test_examples_capped_across_blocks() -> None:
    result = count([HEADER, *(f"x{i}\ny{i}\n".encode() for i in range(4))])
    assert result.malformed == 8
    assert result.malformed_examples == ("x0", "y0", "x1", "y1", "x2")


def test_quoted_fields() -> None:
    body = HEADER + (
        b'"P,1",t,a,1\n'
        b'"P ""2""",t,"b",2\n'
        b'P3,"x\ny",c,3\n'
        b'"P\n4","t","d","4"\r\n'
        b"P5,t, e ,5\n"  # spaces are kept
    )
    result = count([body])
    assert result.pairs == {
        ("P,1", "a"): 1,
        ('P "2"', "b"): 1,
        ("P3", "c"): 1,
        ("P\n4", "d"): 1,
        ("P5", " e "): 1,
    }
    assert (result.rows, result.malformed) == (5, 0)


def test_blank_lines_are_not_rows() -> None:
    body = HEADER + b"\nP1,t,a,1\n\r\n\nP1,t,a,1\n\n"
    assert as_tuple(count([body])) == ({("P1", "a"): 2}, 2, 0)


def test_crlf_body() -> None:
    body = (HEADER + reference_lines(300)).replace(b"\n", b"\r\n")
    assert as_tuple(count([body])) == oracle(body)
    assert as_tuple(count([body[i : i + 7] for i in range(0, len(body), 7)])) == oracle(body)


def test_unterminated_quote_at_end_counts_like_csv() -> None:
    body = HEADER + b'P1,t,a,1\nP2,t,"b\nc,1\n'
    assert as_tuple(count([body])) == oracle(body)
    assert oracle(body)[1:] == (2, 1)


def test_invalid_utf8_is_replaced() -> None:
    result = count([HEADER + b"P\xff,t,a,1\nP\xff,t,a,1\n"])
    assert result.pairs == {("P\ufffd", "a"): 2}


def test_long_line_raises() -> None:
    with pytest.raises(CsvFormatError, match="longer than"):
        count([HEADER, b"P1,t,a," + b"9" * 200 + b"\n"], max_line_bytes=100)


# count_block, the fast and the exact path


def test_count_block_result_is_picklable() -> None:
    result = count_block(b"P1,t,a,1\nP1,t,a,2\nbad\n", LAYOUT)
    assert result == BlockCount(
        pairs={(b"P1", b"a"): 2}, rows=3, malformed=1, malformed_examples=["bad"]
    )
    assert pickle.loads(pickle.dumps(result)) == result


def test_count_block_last_line_without_newline() -> None:
    result = count_block(b"P1,t,a,1\nP2,t,b,2", LAYOUT)
    assert (result.pairs, result.rows) == ({(b"P1", b"a"): 1, (b"P2", b"b"): 1}, 2)
    assert count_block(b"", LAYOUT) == BlockCount()


def test_clean_block_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("the exact path was used")

    monkeypatch.setattr(_pure, "_count_exact", fail)
    block = reference_lines(20_000)
    assert len(block) > 4 * _pure._SUB_BLOCK_BYTES
    result = count_block(block, LAYOUT)
    assert result.rows == 20_000
    assert sum(result.pairs.values()) == 20_000
    crlf = count_block(block.replace(b"\n", b"\r\n"), LAYOUT)
    assert crlf == result


@pytest.mark.parametrize(
    "block",
    [
        b"P1,t,a\n",  # field count
        b",t,a,1\n",  # empty patient
        b"P1,t,,1\n",  # empty event type
        b"P1,t,a,1\rx\n",  # stray carriage return
        b"P1,t,a,1\r\r\n",
    ],
)
def test_fast_path_declines_what_it_cannot_prove(block: bytes) -> None:
    tally = BlockCount()
    assert not _count_fast(block, LAYOUT, tally)
    assert (tally.pairs, tally.rows, tally.malformed) == (Counter(), 0, 0)


def test_malformed_line_in_one_sub_block(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_pure, "_SUB_BLOCK_BYTES", 64)
    block = reference_lines(50) + b"bad\n" + reference_lines(50) + b"x" * 100 + b"\n"
    header_body = HEADER + block
    assert as_tuple(count([header_body])) == oracle(header_body)


FIELD = st.text(alphabet='Pa1 ,"\r\né', max_size=5)
PLAIN = st.text(alphabet="PSa1 é", min_size=0, max_size=4)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A header, then rows that are mostly valid, sometimes quoted, sometimes broken."""
    names = draw(st.permutations(["patient_id", "event_type", "event_time", "value"]))
    extra = draw(st.integers(min_value=0, max_value=1))
    names = [*names, *(["extra"] * extra)]
    ncols = len(names)
    lines = [",".join(names)]
    for _ in range(draw(st.integers(min_value=0, max_value=25))):
        kind = draw(st.sampled_from(["plain"] * 6 + ["quoted", "weird", "blank", "count"]))
        if kind == "blank":
            lines.append(draw(st.sampled_from(["", "\r"])))
            continue
        if kind == "plain":
            fields = [draw(PLAIN) for _ in range(ncols)]
        elif kind == "count":
            fields = [draw(PLAIN) for _ in range(draw(st.integers(0, ncols + 2)))]
        else:
            fields = [draw(FIELD) for _ in range(ncols)]
        if kind in ("quoted", "weird"):
            fields = [
                '"' + field.replace('"', '""') + '"' if draw(st.booleans()) else field
                for field in fields
            ]
        if kind == "quoted":
            # Valid quoting only: no raw quote, comma or line break outside quotes.
            fields = [
                f if f.startswith('"') else f.translate({34: None, 44: None, 10: None, 13: None})
                for f in fields
            ]
        lines.append(",".join(fields))
    ending = draw(st.sampled_from(["\n", "\r\n"]))
    text = ending.join(lines) + draw(st.sampled_from(["", ending]))
    return text.encode()


@settings(max_examples=300, deadline=None)
@given(bodies(), st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_counting_matches_the_csv_oracle_in_any_chunking(body: bytes, points: list[int]) -> None:
    expected = oracle(body)
    assert as_tuple(count([body])) == expected
    bounds = [0, *sorted(p for p in points if p <= len(body)), len(body)]
    chunks = [body[a:b] for a, b in itertools.pairwise(bounds)]
    assert as_tuple(count(chunks)) == expected


@settings(max_examples=300, deadline=None)
@given(bodies())
def test_fast_path_agrees_with_exact_path(body: bytes) -> None:
    block = body[body.index(b"\n") + 1 :] if b"\n" in body else b""
    header = body[: len(body) - len(block)]
    layout = CsvLayout.from_header(header)
    exact = BlockCount()
    _count_exact(block, layout, exact)
    fast = BlockCount()
    if b'"' not in block and _count_fast(block, layout, fast):
        assert (fast.pairs, fast.rows, fast.malformed, fast.blank_lines) == (
            exact.pairs,
            exact.rows,
            0,
            exact.blank_lines,
        )
    whole = count_block(block, layout)
    assert (Counter(whole.pairs), whole.rows, whole.malformed, whole.blank_lines) == (
        exact.pairs,
        exact.rows,
        exact.malformed,
        exact.blank_lines,
    )
    assert whole.malformed_examples == exact.malformed_examples


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["plain", "blank", "bad", "crlf"]), max_size=60))
def test_fast_path_is_exact_for_plain_rows(kinds: list[str]) -> None:
    text = {"plain": "S1,t,a,1\n", "blank": "\n", "bad": "S1,,a\n", "crlf": "S2,t,b,2\r\n"}
    block = "".join(text[kind] for kind in kinds).encode()
    exact = BlockCount()
    _count_exact(block, LAYOUT, exact)
    fast = BlockCount()
    accepted = _count_fast(block, LAYOUT, fast)
    assert accepted == ("bad" not in kinds)
    if accepted:
        assert (fast.pairs, fast.rows, fast.blank_lines) == (
            exact.pairs,
            exact.rows,
            exact.blank_lines,
        )


def test_blank_lines_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("the exact path was used")

    monkeypatch.setattr(_pure, "_count_exact", fail)
    block = b"\n" * 3_000_000 + b"P1,t,a,1\n\n\r\n" + b"\r\n" * 1000
    result = count_block(block, LAYOUT)
    assert (result.rows, result.blank_lines, result.pairs) == (1, 3_001_002, {(b"P1", b"a"): 1})


def test_reading_and_merging_blocks_equals_counting_the_body() -> None:
    body = HEADER + reference_lines(500) + b"bad\n" + b'"P,1",t,a,1\n'
    reader = BodyReader()
    total = BlockCount()
    for i in range(0, len(body), 1000):
        for piece in reader.feed(body[i : i + 1000]):
            assert reader.layout == LAYOUT
            total.merge(count_block(piece, reader.layout))
    assert count_end(reader, total) is None
    assert Counted.of(BodyCount(total, reader.layout, None)) == count([body])
    assert as_tuple(count([body])) == oracle(body)
