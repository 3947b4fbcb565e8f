"""Tests for the compiled counting kernel, export_client._kernel, against a plain reference.

Skipped where the kernel is not built (no C compiler at install time). The block over 4 GiB is
counted only when EXPORT_COUNTER_HUGE_TESTS=1 is set, as benchmarks/asan.sh does.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from export_client import _counting
from export_client._counting import count_block, count_block_pure
from export_client._layout import CsvLayout

from .test_counting import as_tuple, bodies, count, oracle

kernel = pytest.importorskip("export_client._kernel")

Result = tuple[dict[tuple[bytes, bytes], int], int, int, int, list[bytes]]


def reference(block: bytes, ncols: int, pidx: int, eidx: int, max_examples: int) -> Result | None:
    """What count_lines must return, the plain way."""
    if b'"' in block:
        return None  # quotes: always declined
    pairs: dict[tuple[bytes, bytes], int] = {}
    rows = malformed = blank = 0
    examples: list[bytes] = []
    lines = block.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the block's final "\n" (the last line may lack one)
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]  # CRLF (also on an unterminated last line)
        if b"\r" in line:
            return None  # any other CR: declined
        if not line:
            blank += 1  # blank line: not a row
            continue
        rows += 1
        fields = line.split(b",")
        if len(fields) == ncols and fields[pidx] and fields[eidx]:
            key = (fields[pidx], fields[eidx])
            pairs[key] = pairs.get(key, 0) + 1
        else:
            malformed += 1
            if len(examples) < max_examples:
                examples.append(line)  # without its "\n" and its one stripped "\r"
    return pairs, rows, malformed, blank, examples


def check(
    block: bytes, ncols: int = 4, pidx: int = 0, eidx: int = 2, max_examples: int = 5
) -> Result | None:
    """count_lines of the block, asserted equal to the reference (dict order included)."""
    got: Result | None = kernel.count_lines(block, ncols, pidx, eidx, max_examples)
    expected = reference(block, ncols, pidx, eidx, max_examples)
    assert got == expected
    if got is not None and expected is not None:
        assert list(got[0]) == list(expected[0])  # keys in order of first appearance
    return got


def reference_lines(rows: int) -> bytes:
    types = ["heart_rate", "spo2"]
    return b"".join(
        f"S00{i % 6 + 1},2025-08-26T00:00:{i % 60:02d}.{i:06d}Z,{types[i % 5 % 2]},{i}\n".encode()
        for i in range(rows)
    )


# Unit tests


def test_reference_rows() -> None:
    block = reference_lines(5000)
    pairs, rows, malformed, blank, examples = check(block) or ({}, 0, 0, 0, [])
    assert (rows, malformed, blank, examples) == (5000, 0, 0, [])
    assert sum(pairs.values()) == 5000
    assert len(pairs) == 12


def test_reference_export_rows() -> None:
    """Lines exactly as the project's server writes them, cut at arbitrary points."""
    from export_server import REFERENCE_CATALOG, generate_body

    downloads = REFERENCE_CATALOG.downloads("demo")
    assert downloads is not None
    body = b"".join(generate_body(downloads[0]))
    body = body[body.index(b"\n") + 1 :]
    result = check(body)
    assert result is not None
    assert result[1] == body.count(b"\n")
    for cut in (1, 63, 64, 65, 4097, len(body) // 2):
        check(body[:cut])
        check(body[cut:])


def test_crlf() -> None:
    block = reference_lines(300).replace(b"\n", b"\r\n")
    assert check(block) == check(reference_lines(300))


@pytest.mark.parametrize(
    "block",
    [
        b"\n",
        b"\n\n\n",
        b"\r\n",
        b"\r\n\r\n\n",
        b"P1,t,a,1\n\nP2,t,b,2\n\n",
        b"P1,t,a,1\r\n\r\nP2,t,b,2\r\n",
        b"\nP1,t,a,1",
        b"P1,t,a,1\n\r",  # a last line of just "\r" is blank
    ],
)
def test_blank_lines(block: bytes) -> None:
    result = check(block)
    assert result is not None
    assert result[3] >= 1


@pytest.mark.parametrize(
    "block",
    [
        b"P1,t,a,1\nP2,t,b,2",
        b"P1,t,a,1\nP2,t,b,2\r",
        b"P1,t,a,1\nbad",
        b"P1,t,a,1\nbad\r",
        b"P1,t,a,1\n,t,a,1",
        b"P1,t,a,1\nP1,t,,1\r",
    ],
)
def test_missing_final_newline(block: bytes) -> None:
    assert check(block) is not None


@pytest.mark.parametrize("block", [b"P1,a", b"P1,a\r", b"x\nP1,a\r", b"P1,\r", b",a\r", b"\r,a\r"])
def test_counted_field_last_on_an_unterminated_line(block: bytes) -> None:
    check(block, ncols=2, pidx=0, eidx=1)
    check(block, ncols=2, pidx=1, eidx=0)


@pytest.mark.parametrize(
    "line",
    [
        b"P1,t,a",  # too few fields
        b"P1,t,a,1,extra",  # too many fields
        b",t,a,1",  # empty patient id
        b"P1,t,,1",  # empty event type
        b"P1,t,a,1,",
        b",,,",
        b"P1",
        b" ",
        b",",
    ],
)
def test_malformed_rows(line: bytes) -> None:
    for ending in (b"\n", b"\r\n"):
        block = b"P1,t,a,1\n" + line + ending + b"P2,t,b,2\n"
        assert check(block) == ({(b"P1", b"a"): 1, (b"P2", b"b"): 1}, 3, 1, 0, [line])


def test_spaces_and_other_columns_are_kept() -> None:
    spaced = check(b" P1 ,t, a ,1\nP1,,a,\n")
    assert spaced == ({(b" P1 ", b" a "): 1, (b"P1", b"a"): 1}, 2, 0, 0, [])
    assert check(b"a,E,b,P,c\n", ncols=5, pidx=3, eidx=1) == ({(b"P", b"E"): 1}, 1, 0, 0, [])


def test_examples_limit_and_order() -> None:
    bad = [f"bad{i}".encode() for i in range(8)]
    block = b"".join(line + b"\nP1,t,a,1\n" for line in bad)
    for limit in (0, 1, 5, 8, 100):
        result = check(block, max_examples=limit)
        assert result is not None
        assert result[2] == 8
        assert result[4] == bad[:limit]


def test_many_examples() -> None:
    block = b"x\r\n" * 10_000
    result = check(block, max_examples=sys.maxsize)
    assert result is not None
    assert result[4] == [b"x"] * 10_000


@pytest.mark.parametrize(
    "block",
    [
        b'"',
        b'P1,t,a,1\n"P2",t,b,2\n',
        b"P1,t,a,1\n" * 1000 + b'"',  # a quote in the last bytes
        b'P1,t,a,1\n\rx"',
        b'P1,t,a,1\nP2,t,"b\nc",1\n',
    ],
)
def test_quotes_declined(block: bytes) -> None:
    assert check(block) is None


@pytest.mark.parametrize(
    "block",
    [
        b"\r",  # ends the block: a blank last line
        b"P1,t,a,1\rx\n",
        b"P1,t,\ra,1\n",
        b"P1,t,a,1\r\r\n",
        b"\r\r",
        b"P1,t,a,1\n" * 1000 + b"\rP1,t,a,1\n",
        b"P1,t,a,1\n\r\r",
    ],
)
def test_lone_carriage_return_declined(block: bytes) -> None:
    result = check(block)
    assert (result is None) == (block != b"\r")


def test_nul_bytes() -> None:
    block = b"P\x00,t,a\x00b,1\n\x00\n\x00,\x00,\x00,\x00\n" + b"\x00" * 200
    result = check(block)
    assert result is not None
    assert result[0] == {(b"P\x00", b"a\x00b"): 1, (b"\x00", b"\x00"): 1}


def test_huge_fields() -> None:
    big = b"P" * (1 << 20) + b"x"
    other = b"E" * (3 << 19)
    block = big + b",t," + other + b",1\n" + big + b",t," + other + b",1\r\n" + big + b"\n"
    result = check(block)
    assert result is not None
    assert result[0] == {(big, other): 2}
    assert result[4] == [big]
    assert check(b"v" * (1 << 20) + b"\n" + b"," * (1 << 20), max_examples=2) is not None


@pytest.mark.parametrize("size", [0, 1, 2, 63, 64, 65, 127, 128, 1000])
def test_no_newline_at_all(size: int) -> None:
    check(b"x" * size)
    check(b"P1,t,a," + b"1" * size)
    check(b"," * size, ncols=size + 1 if size >= 1 else 2, pidx=0, eidx=1)


def test_empty_block() -> None:
    assert check(b"") == ({}, 0, 0, 0, [])


def test_every_length_and_line_position() -> None:
    """Separators at every offset of the 64-byte words and of the zero-padded tail."""
    for length in range(1, 140):
        for ending in (b"\n", b"\r\n", b""):
            block = b"a,b\n" + b"x" * length + b",y" + ending
            check(block, ncols=2, pidx=0, eidx=1)
            check(block[1:], ncols=2, pidx=1, eidx=0)


def test_many_distinct_keys() -> None:
    """The table grows many times over; equal hashes must still compare the bytes."""
    block = b"".join(b"P%d,t,%s,1\n" % (i, b"ab"[i % 2 : i % 2 + 1]) for i in range(200_000))
    result = check(block + block[: len(block) // 2])
    assert result is not None
    assert len(result[0]) == 200_000


def test_keys_with_common_words() -> None:
    """Keys of 1 to 40 bytes that share prefixes and suffixes: the overlapping loads."""
    values = [b"x" * n for n in range(1, 41)] + [b"x" * n + b"y" for n in range(40)]
    values += [b"y" + b"x" * n for n in range(1, 40)]
    lines = [p + b"," + e + b"\n" for p in values for e in values[::7]]
    result = check(b"".join(lines * 2), ncols=2, pidx=0, eidx=1)
    assert result is not None
    assert set(result[0].values()) == {2}


# Arguments


def test_keyword_arguments() -> None:
    result = kernel.count_lines(
        block=b"P1,a\n", field_count=2, patient_index=0, event_type_index=1, max_examples=0
    )
    assert result == ({(b"P1", b"a"): 1}, 1, 0, 0, [])


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((bytearray(b"a,b\n"), 2, 0, 1, 5), TypeError),
        ((memoryview(bytearray(b"a,b\n")), 2, 0, 1, 5), TypeError),  # mutable underneath
        ((memoryview(b"a,b\n,c\n")[::2], 2, 0, 1, 5), BufferError),  # not contiguous
        ((memoryview(b"a,b\nc,d\n").cast("H"), 2, 0, 1, 5), TypeError),
        (("a,b\n", 2, 0, 1, 5), TypeError),
        ((None, 2, 0, 1, 5), TypeError),
        ((b"a,b\n", 2.0, 0, 1, 5), TypeError),
        ((b"a,b\n", 2, "0", 1, 5), TypeError),
        ((b"a,b\n", 2, 0, 1), TypeError),
        ((b"a,b\n", 2, 0, 1, 5, 6), TypeError),
        ((b"a,b\n", 1, 0, 1, 5), ValueError),
        ((b"a,b\n", 0, 0, 0, 5), ValueError),
        ((b"a,b\n", -3, 0, 1, 5), ValueError),
        ((b"a,b\n", 2, 0, 2, 5), ValueError),
        ((b"a,b\n", 2, 2, 0, 5), ValueError),
        ((b"a,b\n", 2, -1, 1, 5), ValueError),
        ((b"a,b\n", 2, 0, -1, 5), ValueError),
        ((b"a,b\n", 2, 1, 1, 5), ValueError),
        ((b"a,b\n", 2, 0, 1, -1), ValueError),
        ((b"a,b\n", 2**70, 0, 1, 5), OverflowError),
        ((b"a,b\n", 2, 0, 1, 2**70), OverflowError),
    ],
)
def test_argument_errors(args: tuple[object, ...], error: type[Exception]) -> None:
    with pytest.raises(error):
        kernel.count_lines(*args)


def test_bytes_subclass_is_accepted() -> None:
    class Block(bytes):
        pass

    assert kernel.count_lines(Block(b"P,a\n"), 2, 0, 1, 0) == ({(b"P", b"a"): 1}, 1, 0, 0, [])


# Memory: references, leaks, allocation failures


def test_no_reference_leaks() -> None:
    block = reference_lines(100) + b"bad\n"
    before = sys.getrefcount(block)
    results = [kernel.count_lines(block, 4, 0, 2, 5) for _ in range(100)]
    assert sys.getrefcount(block) == before
    pairs, *_, examples = results[-1]
    for key in pairs:
        patient, event_type = key
        # Each held by its owner, the local variable and getrefcount's argument only.
        assert sys.getrefcount(key) == 3
        assert sys.getrefcount(patient) == 3
        assert sys.getrefcount(event_type) == 3
    example = examples[0]
    assert sys.getrefcount(example) == 3


def test_no_memory_leaks() -> None:
    """Raw allocations (the C tables) are traced by tracemalloc: none may outlive a call."""
    blocks = [
        b"".join(b"P%d,t,a,1\nbad\n" % i for i in range(20_000)),  # a grown table
        b'P1,t,a,1\n"\n',  # declined
        b"P1,t,a,1\r\rx\n",  # declined
    ]
    tracemalloc.start()
    try:
        for block in blocks:
            kernel.count_lines(block, 4, 0, 2, 5)
        with pytest.raises(ValueError, match="differ"):  # the error path
            kernel.count_lines(b"", 4, 0, 0, 5)
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(20):
            for block in blocks:
                kernel.count_lines(block, 4, 0, 2, 5)
            with pytest.raises(ValueError, match="differ"):
                kernel.count_lines(b"", 4, 0, 0, 5)
        assert tracemalloc.get_traced_memory()[0] - start < 10_000
    finally:
        tracemalloc.stop()


def test_allocation_failures_raise_memory_error() -> None:
    """Make the n-th allocation fail, for every n, until the call goes through."""
    testcapi = pytest.importorskip("_testcapi")
    block = b"".join(b"P%d,t,a,1\nbad%d\n" % (i, i) for i in range(100))
    expected = reference(block, 4, 0, 2, 10)
    for start in range(10_000):
        testcapi.set_nomemory(start, 0)
        try:
            result = kernel.count_lines(block, 4, 0, 2, 10)
        except MemoryError:
            continue
        finally:
            testcapi.remove_mem_hooks()
        assert result == expected
        break
    else:
        pytest.fail("count_lines never succeeded")
    assert start > 10  # the table, its growth, the keys, the counts, the examples


# Blocks over 2**32 bytes: offsets and lengths must not be truncated to 32 bits.


@pytest.mark.skipif(
    os.environ.get("EXPORT_COUNTER_HUGE_TESTS") != "1",
    reason="needs about 7 GB of memory and a minute; run by benchmarks/asan.sh",
)
def test_block_over_4_gib() -> None:
    row = b"S1,2025-08-26T00:00:01.123456Z,heart_rate,75\n"
    piece = row * 1_000_000
    pieces = (1 << 32) // len(piece) + 1
    tail = b"S2,t,spo2,1\r\nbad line\n" + b"x" * 100 + b",S3,t"
    block = b"".join([piece] * pieces + [tail])  # no second copy of the whole block
    del piece
    assert len(block) > (1 << 32)
    repeats = pieces * 1_000_000
    pairs, rows, malformed, blank, examples = kernel.count_lines(block, 4, 0, 2, 5)
    assert pairs == {(b"S1", b"heart_rate"): repeats, (b"S2", b"spo2"): 1}
    assert (rows, malformed, blank) == (repeats + 3, 2, 0)
    assert examples == [b"bad line", b"x" * 100 + b",S3,t"]
    del block
    # A single line of over 2**31 bytes, its patient field as long.
    field = b"P" * ((1 << 31) + 7)
    pairs, rows, malformed, blank, examples = kernel.count_lines(field + b",e", 2, 0, 1, 0)
    assert pairs == {(field, b"e"): 1}
    assert (rows, malformed, blank, examples) == (1, 0, 0, [])


# Threads


def test_threads_count_alike() -> None:
    blocks = [reference_lines(2000 + i) + b"bad%d\n" % i for i in range(16)]
    blocks += [b"".join(b"P%d,t,e%d,1\n" % (i, j) for i in range(3000)) for j in range(4)]
    expected = [reference(block, 4, 0, 2, 5) for block in blocks]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            got = list(pool.map(lambda b: kernel.count_lines(b, 4, 0, 2, 5), blocks * 2))
            assert got == expected * 2


def test_the_gil_is_released() -> None:
    """Python code runs in another thread while the kernel counts.

    With the GIL held for the whole call, the main thread could not run at all in the middle of
    it (it gets the GIL only between bytecodes of the counting thread, every 5 ms at most, and
    only before and after the call); with the GIL released it runs throughout. Timing only
    enters as "some stamp in the middle fifth of the call", so a slow or busy machine does not
    make it fail, and a few tries absorb a descheduled main thread.
    """
    block = reference_lines(20_000) * 40  # about 36 MB: tens of milliseconds

    def count(span: list[float], done: threading.Event) -> None:
        span.append(time.perf_counter())
        kernel.count_lines(block, 4, 0, 2, 5)
        span.append(time.perf_counter())
        done.set()

    for _ in range(5):
        span: list[float] = []
        done = threading.Event()
        stamps: list[float] = []
        thread = threading.Thread(target=count, args=(span, done))
        thread.start()
        while not done.is_set():
            stamps.append(time.perf_counter())
        thread.join()
        start, end = span
        middle = (start + 0.4 * (end - start), start + 0.6 * (end - start))
        if any(middle[0] < stamp < middle[1] for stamp in stamps):
            return
    pytest.fail("the main thread never ran while the kernel counted")


# Hypothesis: any bytes, any layout


ALPHABET = b',\n\r"ab\x00'
LAYOUTS = st.integers(min_value=2, max_value=6).flatmap(
    lambda ncols: st.tuples(
        st.just(ncols),
        st.lists(st.integers(0, ncols - 1), min_size=2, max_size=2, unique=True),
    )
)


@st.composite
def blocks(draw: st.DrawFn) -> bytes:
    """Bytes mostly from the interesting alphabet, sometimes anything, sometimes line-shaped."""
    kind = draw(st.sampled_from(["alphabet", "alphabet", "lines", "binary"]))
    if kind == "binary":
        return draw(st.binary(max_size=300))
    if kind == "alphabet":
        weights = draw(st.lists(st.integers(0, 3), min_size=len(ALPHABET), max_size=len(ALPHABET)))
        letters = [bytes([c]) for c, w in zip(ALPHABET, weights, strict=True) for _ in range(w)]
        letters = letters or [b"a"]
        return b"".join(draw(st.lists(st.sampled_from(letters), max_size=300)))
    field = st.binary(max_size=3) | st.sampled_from([b"", b"a", b"S001", b"heart_rate", b"\r"])
    lines = draw(st.lists(st.lists(field, min_size=0, max_size=7).map(b",".join), max_size=30))
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    return ending.join(lines) + draw(st.sampled_from([b"", b"\r", ending]))


@settings(max_examples=1000, deadline=None)
@given(blocks(), LAYOUTS, st.integers(0, 6))
def test_matches_the_reference(block: bytes, layout: tuple[int, list[int]], limit: int) -> None:
    ncols, (pidx, eidx) = layout
    check(block, ncols, pidx, eidx, limit)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), LAYOUTS, st.integers(0, 3))
def test_matches_the_reference_on_any_bytes(
    block: bytes, layout: tuple[int, list[int]], limit: int
) -> None:
    ncols, (pidx, eidx) = layout
    check(block, ncols, pidx, eidx, limit)
    check(block.replace(b'"', b"").replace(b"\r", b"\n"), ncols, pidx, eidx, limit)


# The kernel inside the counting core: against the pure core and csv, on whole bodies.

in_use = pytest.mark.skipif(
    _counting._kernel is None, reason=f"{_counting.PURE_PYTHON_ENV} switches the kernel off"
)


@in_use
@settings(max_examples=300, deadline=None)
@given(body=bodies(), points=st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_both_cores_and_csv_agree_on_any_body_split_anywhere(
    body: bytes, points: list[int]
) -> None:
    bounds = [0, *sorted(p for p in points if p <= len(body)), len(body)]
    chunks = [body[a:b] for a, b in itertools.pairwise(bounds)]
    compiled = count(chunks)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_counting, "_kernel", None)
        pure = count(chunks)
    assert compiled == pure
    assert as_tuple(compiled) == oracle(body)


@in_use
@settings(max_examples=500, deadline=None)
@given(block=blocks(), layout=LAYOUTS)
def test_count_block_with_the_kernel_equals_the_pure_core(
    block: bytes, layout: tuple[int, list[int]]
) -> None:
    ncols, (pidx, eidx) = layout
    csv_layout = CsvLayout(ncols, pidx, eidx)
    assert count_block(block, csv_layout) == count_block_pure(block, csv_layout)


@settings(max_examples=300, deadline=None)
@given(blocks(), st.integers(0, 300), st.integers(0, 300))
def test_a_memoryview_of_bytes_counts_as_its_slice(block: bytes, start: int, stop: int) -> None:
    view = memoryview(block)[start:stop]
    assert kernel.count_lines(view, 4, 0, 2, 5) == kernel.count_lines(block[start:stop], 4, 0, 2, 5)


def test_a_released_memoryview_is_refused() -> None:
    view = memoryview(b"P1,t,a,1\n")
    view.release()
    with pytest.raises(ValueError, match="released"):
        kernel.count_lines(view, 4, 0, 2, 5)


def test_a_memoryview_cannot_be_released_while_it_is_counted() -> None:
    block = memoryview(b"P1,t,a,1\n" * 2_000_000)
    with ThreadPoolExecutor(1) as pool:
        counting = pool.submit(kernel.count_lines, block, 4, 0, 2, 5)
        # While the kernel holds it, the view refuses to be released (BufferError).
        with contextlib.suppress(BufferError):
            block.release()
        assert counting.result()[1] == 2_000_000
