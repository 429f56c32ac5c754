"""Property-based tests: whatever a user or a file throws at the loaders, only clear errors.

Each test reports how many cases ran with `pytest --hypothesis-show-statistics`.
"""

import gzip
import string

import pytest
import torch
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
    from fastclr.commands import _config_from_args

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


def _cifar_batch_bytes(n: int) -> bytes:
    import pickle

    import numpy as np
    data = np.arange(n * 3072, dtype=np.int64).astype(np.uint8).reshape(n, 3072)
    return pickle.dumps({b"data": data, b"labels": list(range(n))}, protocol=2)


@CASES
@given(st.one_of(st.binary(max_size=400),
                 st.tuples(st.integers(0, 10**6), st.binary(min_size=1, max_size=8),
                           st.booleans())))
def test_cifar_reader_on_random_and_damaged_pickles(tmp_path_factory, case):
    """Random bytes, or a real CIFAR batch with bytes overwritten or cut: a CIFAR batch or a
    DataError, never another exception (and never code run by the unpickler)."""
    from fastclr.data.formats import read_cifar

    if isinstance(case, bytes):
        blob = case
    else:
        at, patch, cut = case
        good = _cifar_batch_bytes(2)
        at %= len(good)
        blob = good[:at] if cut else good[:at] + patch + good[at + len(patch):]
    root = tmp_path_factory.mktemp("cifar")
    (root / "data_batch_1").write_bytes(blob)
    try:
        images, labels = read_cifar(root, ["data_batch_1"], b"labels")
    except DataError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32)
    assert len(labels) == len(images)


@CASES
@given(st.one_of(st.integers(0, 3 * 3 * 96 * 96),  # any length, and lengths near whole images
                 st.builds(lambda k, d: max(0, k * 3 * 96 * 96 + d), st.integers(0, 3),
                           st.integers(-2, 2))))
def test_stl10_reader_on_any_length(tmp_path_factory, size):
    from fastclr.data.formats import read_stl10_images

    path = tmp_path_factory.mktemp("stl") / "train_X.bin"
    path.write_bytes(bytes(size))
    per_image = 3 * 96 * 96
    if size and size % per_image == 0:
        assert tuple(read_stl10_images(path).shape) == (size // per_image, 3, 96, 96)
    else:
        with pytest.raises(DataError):
            read_stl10_images(path)


def _image_bytes(fmt: str) -> bytes:
    import io

    import numpy as np
    from PIL import Image
    pixels = np.arange(20 * 24 * 3, dtype=np.int64).astype(np.uint8).reshape(20, 24, 3)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


@CASES
@given(st.sampled_from(["PNG", "JPEG", "BMP", "WEBP"]), st.integers(0, 10**6),
       st.binary(min_size=1, max_size=8), st.booleans())
def test_image_decoding_on_damaged_files(tmp_path_factory, fmt, at, patch, cut):
    """A real image file with bytes overwritten or cut off: decoded, or listed as a failure
    with its reason; the batch decode itself never raises."""
    from fastclr.data.images import check_header, decode_many

    good = _image_bytes(fmt)
    at %= len(good)
    blob = good[:at] if cut else good[:at] + patch + good[at + len(patch):]
    path = tmp_path_factory.mktemp("img") / f"x.{fmt.lower()}"
    path.write_bytes(blob)
    reason = check_header(path)
    assert reason is None or (isinstance(reason, str) and reason)
    images, kept, failures = decode_many([path], 16, threads=1)
    assert len(images) + len(failures) == 1 and int(kept.sum()) == len(images)
    if images.numel():
        assert images.dtype == torch.uint8 and tuple(images.shape) == (1, 3, 16, 16)
    else:
        assert failures[0][0] == str(path) and failures[0][1]
