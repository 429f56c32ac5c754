"""Property-based tests: whatever a user or a file throws at the loaders, only clear errors.

Each test reports how many cases ran with `pytest --hypothesis-show-statistics`.
"""

import gzip
import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastclr.cli import build_parser
from fastclr.config import Config, config_from_dict, load_config, options, read_yaml
from fastclr.data import read_idx
from fastclr.errors import ConfigError, DataError

NAMES = [f.name for f in options()]
CASES = settings(max_examples=300, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
values = st.one_of(scalars, st.lists(scalars, max_size=3))
keys = st.one_of(st.sampled_from(NAMES), st.text(string.ascii_lowercase + "_", max_size=15))


@CASES
@given(st.dictionaries(keys, values, max_size=6))
def test_config_dicts_give_a_config_or_a_config_error(raw):
    try:
        cfg = config_from_dict(raw)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert isinstance(cfg, Config)
    for key, value in raw.items():  # what was accepted was taken as given
        got = getattr(cfg, key)
        assert got == (tuple(value) if isinstance(value, list) else value) or \
            (isinstance(value, int) and got == float(value))


@CASES
@given(st.text(max_size=200))
def test_any_text_file_as_config(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "x.yaml"
    path.write_text(text)
    try:
        load_config(str(path))
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)


flag_names = st.sampled_from(["--" + n.replace("_", "-") for n in NAMES] + ["--bogus", "-x"])
flag_values = st.one_of(st.text(max_size=10),
                        st.sampled_from(["0", "-1", "1e9", "nan", "inf", "true", "none",
                                         "0.2,1.0", "1,2,3", "resnet18", "cuda:7"]))


@CASES
@given(st.lists(st.tuples(flag_names, flag_values), max_size=5))
def test_cli_arguments_parse_or_fail_cleanly(capsys, pairs):
    from fastclr.cli import _config_from_args

    argv = ["train"] + [x for pair in pairs for x in pair]
    try:
        args = build_parser().parse_args(argv)
        _config_from_args(args)
    except SystemExit as e:  # argparse: one line on stderr, exit 2
        assert e.code == 2
        err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
        assert len(err) == 1 and "error:" in err[0]
    except ConfigError as e:
        from fastclr.cli import one_line
        assert "\n" not in one_line(e) and "\r" not in one_line(e)


@CASES
@given(st.binary(max_size=300), st.booleans())
def test_idx_reader_on_random_bytes(tmp_path_factory, blob, compress):
    path = tmp_path_factory.mktemp("idx") / "train-images-idx3-ubyte"
    path.write_bytes(gzip.compress(blob) if compress else blob)
    try:
        tensor = read_idx(path)
    except DataError as e:
        assert str(e)
        return
    assert tensor.numel() == len(blob) - 4 - 4 * tensor.ndim  # a valid file, read exactly


@CASES
@given(st.integers(1, 3), st.lists(st.integers(0, 5), min_size=1, max_size=3),
       st.integers(-3, 3))
def test_idx_reader_on_near_valid_files(tmp_path_factory, ndim, dims, extra):
    dims = (dims * 3)[:ndim]
    count = 1
    for d in dims:
        count *= d
    body = bytes(max(0, count + extra))
    header = bytes([0, 0, 8, ndim]) + b"".join(d.to_bytes(4, "big") for d in dims)
    path = tmp_path_factory.mktemp("idx") / "f"
    path.write_bytes(header + body)
    if max(0, count + extra) == count:  # the body is exactly as long as the header says
        assert tuple(read_idx(path).shape) == tuple(dims)
    else:
        with pytest.raises(DataError):
            read_idx(path)
