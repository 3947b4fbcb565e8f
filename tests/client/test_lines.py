"""Tests for the incremental line splitter."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from export_client._exceptions import CsvFormatError
from export_client._lines import LineSplitter, first_record_end

BODY = (
    b"patient_id,event_time,event_type,value\n"
    b"P001,2025-08-26T00:00:03.123456Z,bp_sys,118\n"
    b"P002,2025-08-26T00:00:10Z,bp_dia,80\r\n"
    b"\n"
    b'"P,3",2025-08-26T00:00:17Z,"multi\nline ""quoted""",1\n'
    b"\r\n"
    b'P004,x,"a\r\nb",2\n'
    b"P005,2025-08-26T00:00:24Z,bp_sys,121"
)


def record_ends(body: bytes) -> list[int]:
    """Independent oracle: where csv.reader, given the body's lines, finishes each record."""
    # The sentinel keeps csv from closing a record only because the body ended in it.
    lines = (body + b"\x00").split(b"\n")
    with_newlines = [line + b"\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    offsets: list[int] = []
    position = 0

    def source() -> Iterator[str]:
        nonlocal position
        for line in with_newlines:
            position += len(line)
            yield line.decode("utf-8", "surrogateescape")

    reader = csv.reader(source())
    while True:
        try:
            next(reader)
        except StopIteration:
            break
        except csv.Error:
            pass  # csv drops the rest of the line, and so does the splitter
        offsets.append(position)
    return [end for end in offsets if end <= len(body) and body[end - 1 : end] == b"\n"]


def run(chunks: Sequence[bytes], *, max_line_bytes: int = 1 << 20) -> list[bytes]:
    """Feed the chunks; return every feed output, then the finish output."""
    splitter = LineSplitter(max_line_bytes=max_line_bytes)
    outputs = [b"".join(splitter.feed(chunk)) for chunk in chunks]
    outputs.append(splitter.finish())
    return outputs


def check_chunking(body: bytes, chunks: Sequence[bytes]) -> None:
    """After every chunk the splitter has given out exactly the records completed so far."""
    assert b"".join(chunks) == body
    ends = record_ends(body)
    outputs = run(chunks)
    assert b"".join(outputs) == body
    fed = given_out = 0
    for chunk, output in zip(chunks, outputs, strict=False):
        fed += len(chunk)
        given_out += len(output)
        assert given_out == max([0, *(end for end in ends if end <= fed)])


def cut(body: bytes, points: Sequence[int]) -> list[bytes]:
    bounds = [0, *sorted(points), len(body)]
    return [body[a:b] for a, b in itertools.pairwise(bounds)]


def test_whole_body_in_one_chunk() -> None:
    outputs = run([BODY])
    assert outputs == [BODY[: BODY.rindex(b"\n") + 1], b"P005,2025-08-26T00:00:24Z,bp_sys,121"]


def test_oracle_sees_quoted_newlines() -> None:
    # Guards the oracle itself: the quoted newlines must not end records.
    ends = record_ends(BODY)
    assert len(ends) == BODY.count(b"\n") - 2


@pytest.mark.parametrize("point", range(len(BODY) + 1))
def test_every_split_point(point: int) -> None:
    check_chunking(BODY, cut(BODY, [point]))


def test_one_byte_chunks() -> None:
    check_chunking(BODY, [BODY[i : i + 1] for i in range(len(BODY))])


def test_crlf_split_between_cr_and_lf() -> None:
    body = b"h,patient_id,event_type\r\na,b,c\r\nd,e,f\r\n"
    point = body.index(b"\r\na,b") + 1
    outputs = run([body[:point], body[point:]])
    assert outputs == [b"", body, b""]


def test_quoted_newline_split() -> None:
    body = b'a,"x\ny",c\nd,e,f\n'
    outputs = run([body[:4], body[4:6], body[6:]])
    assert outputs == [b"", b"", body, b""]


def test_missing_final_newline() -> None:
    assert run([b"a,b\nc,", b"d"]) == [b"a,b\n", b"", b"c,d"]


def test_empty_chunks_and_empty_body() -> None:
    assert run([b"", b"a\n", b"", b""]) == [b"", b"a\n", b"", b"", b""]
    assert run([]) == [b""]


def test_blank_lines_are_passed_through() -> None:
    assert run([b"\n\r\na\n\n"]) == [b"\n\r\na\n\n", b""]


def test_quote_inside_unquoted_field_is_literal() -> None:
    # csv reads `ab"c` as a plain field, so the newline after it ends the record.
    body = b'ab"c,d\ne,f\n'
    assert record_ends(body) == [7, 11]
    check_chunking(body, [body[:3], body[3:]])


def test_stray_cr_drops_rest_of_line_like_csv() -> None:
    # After the error csv starts afresh on the next line, so the quote does not open a field.
    body = b'a\rb,"c\nd,e\n'
    assert record_ends(body) == [7, 11]
    check_chunking(body, [body[:5], body[5:]])


def test_first_record_end() -> None:
    assert first_record_end(b"a,b\nc\n") == 4
    assert first_record_end(b'"a\nb",c\nd\n') == 8
    assert first_record_end(b"a,b") == 3
    assert first_record_end(b'"a\nb') == 4


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([b"a", b",", b'"', b"\n", b"\r", b"\r\n", b'""', b"\xc3\xa9"])),
    st.lists(st.integers(min_value=0, max_value=200)),
)
def test_any_chunking_property(pieces: list[bytes], points: list[int]) -> None:
    body = b"".join(pieces)
    check_chunking(body, cut(body, [p for p in points if p <= len(body)]))


@given(st.lists(st.integers(min_value=0, max_value=len(BODY)), max_size=20))
def test_any_chunking_of_reference_body(points: list[int]) -> None:
    check_chunking(BODY, cut(BODY, points))


def test_line_at_limit_is_accepted() -> None:
    line = b"x" * 10 + b"\n"
    assert run([line, line[:5], line[5:]], max_line_bytes=10) == [line, b"", line, b""]
    assert run([b"x" * 10], max_line_bytes=10) == [b"", b"x" * 10]


def test_long_line_in_many_small_chunks_raises() -> None:
    splitter = LineSplitter(max_line_bytes=100)
    for _ in range(100):
        assert splitter.feed(b"x") == []
    with pytest.raises(CsvFormatError, match="longer than the limit of 100 bytes"):
        splitter.feed(b"x")


def test_long_line_in_one_chunk_raises() -> None:
    short = b"a,b\n" * 50
    with pytest.raises(CsvFormatError):
        run([short + b"y" * 101 + b"\n" + short], max_line_bytes=100)
    with pytest.raises(CsvFormatError):
        run([b"y" * 101 + b"\n"], max_line_bytes=100)


def test_long_line_completing_the_carry_raises() -> None:
    with pytest.raises(CsvFormatError):
        run([b"y" * 60, b"y" * 41 + b"\nok\n"], max_line_bytes=100)


def test_many_short_lines_in_a_big_chunk_pass() -> None:
    block = b"abcdefghi\n" * 1000  # lines of 9 bytes, window of 10
    assert run([block], max_line_bytes=9) == [block, b""]


def test_long_quoted_record_raises() -> None:
    with pytest.raises(CsvFormatError):
        run([b'a,"' + b"x\n" * 60 + b'"\n'], max_line_bytes=100)
    splitter = LineSplitter(max_line_bytes=100)
    splitter.feed(b'a,"')
    for _ in range(48):
        assert splitter.feed(b"x\n") == []
    with pytest.raises(CsvFormatError):
        splitter.feed(b"x\n")


def test_invalid_limit() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        LineSplitter(max_line_bytes=0)


@pytest.mark.parametrize("quoted", [False, True])
def test_a_chunk_s_complete_records_are_not_copied(quoted: bool) -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"a,b\nc,") == [memoryview(b"a,b\nc,")[:4]]
    rows = b'd\n"e",f\ng,h\n' if quoted else b"d\ne,f\ng,h\n"
    chunk = rows + b"i,"
    carried, bulk = splitter.feed(chunk)
    assert carried == b"c,d\n"
    assert isinstance(bulk, memoryview)
    assert bulk.obj is chunk
    assert bytes(bulk) == rows[2:]
    whole = b"j\nk,l\n"
    carried, rest = splitter.feed(whole)
    assert (carried, bytes(rest)) == (b"i,j\n", b"k,l\n")
    assert splitter.feed(b"m,n\n")[0] == b"m,n\n"
