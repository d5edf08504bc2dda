"""Property-based tests (hypothesis) of what parses user input: the CLI's --param and integer-list parsers, hash
lengths, index parameter checks, echoed-value shortening and the image decoders. Whatever the input, the
answer is the value or the one typed error, never another exception."""

from __future__ import annotations

import io

import click
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from medhash.cli.index_cmds import _parse_params
from medhash.cli.options import HashBits, int_list
from medhash.data.decode import read_image, read_image_header
from medhash.errors import ImageDecodeError, InvalidParameterError, shorten
from medhash.index.kinds import KINDS

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

keys = st.text(st.characters(blacklist_characters="=", blacklist_categories=("Cs",)), min_size=1).filter(str.strip)


@FAST
@given(key=keys, value=st.integers(-10**12, 10**12))
def test_param_parser_reads_integers(key, value):
    assert _parse_params((f"{key}={value}",)) == {key.strip(): value}


@FAST
@given(items=st.lists(st.text(st.characters(blacklist_categories=("Cs",))), max_size=4))
def test_param_parser_gives_a_dict_or_a_usage_error(items):
    try:
        params = _parse_params(tuple(items))
    except click.BadParameter as exc:
        assert len(str(exc)) < 300  # the item is quoted shortened
        return
    assert all(isinstance(v, (int, float, str)) for v in params.values())


@FAST
@given(kind=st.sampled_from(sorted(KINDS)), key=st.text(max_size=12), value=st.one_of(
    st.integers(), st.floats(allow_nan=True), st.text(max_size=8), st.booleans(), st.none()))
def test_index_parameter_checks_accept_or_refuse_in_one_line(kind, key, value):
    try:
        checked = KINDS[kind].check_overrides({key: value})
    except InvalidParameterError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(f"index kind {kind}: ")
        return
    spec = next(s for s in KINDS[kind].param_specs if s.name == key)
    assert spec.low <= checked[key] <= spec.high


@FAST
@given(values=st.lists(st.integers(-10**6, 10**6), max_size=8), spaces=st.booleans())
def test_int_list_round_trips(values, spaces):
    text = (", " if spaces else ",").join(map(str, values))
    assert int_list(text) == tuple(values)


@FAST
@given(text=st.text(max_size=30))
def test_int_list_gives_integers_or_a_usage_error(text):
    try:
        assert all(isinstance(v, int) for v in int_list(text))
    except click.BadParameter:
        pass


@FAST
@given(value=st.one_of(st.integers(-1000, 1000), st.text(max_size=6)))
def test_hash_bits_are_multiples_of_8_in_range(value):
    try:
        bits = HashBits().convert(value, None, None)
    except click.BadParameter:
        return
    assert bits % 8 == 0 and 8 <= bits <= 256


@FAST
@given(text=st.text(), limit=st.integers(1, 200))
def test_shorten_bounds_any_text(text, limit):
    out = shorten(text, limit)
    assert out == text if len(text) <= limit else (out.startswith(text[:limit]) and len(out) <= limit + 40)


def _png(mode: str, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


SEEDS = [_png("L", (8, 8)), _png("RGB", (5, 3)), _png("I;16", (4, 4))]


@FAST
@given(data=st.binary(max_size=2048))
def test_random_bytes_decode_or_raise_image_decode_error(data):
    for read in (read_image, read_image_header):
        try:
            read(data)
        except ImageDecodeError:
            pass


@FAST
@given(seed=st.sampled_from(SEEDS), position=st.integers(0, 10_000), byte=st.integers(0, 255),
       cut=st.integers(0, 10_000))
def test_mutated_pngs_decode_or_raise_image_decode_error(seed, position, byte, cut):
    data = bytearray(seed)
    data[position % len(data)] = byte
    data = bytes(data[:max(1, cut % (len(data) + 1))])
    for read in (read_image, read_image_header):
        try:
            read(data)
        except ImageDecodeError:
            pass


@pytest.mark.parametrize("prefix", [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\x00" * 128 + b"DICM"])
@settings(max_examples=60, deadline=None)
@given(tail=st.binary(max_size=512))
def test_format_magic_with_garbage_raises_image_decode_error(prefix, tail):
    with pytest.raises(ImageDecodeError):
        read_image(prefix + tail)
