"""minipeft's safetensors reader/writer against the reference library, and its errors."""

import json
import struct

import pytest
import torch

from minipeft import MiniPeftError
from minipeft.io import safetensors as st

import safetensors.torch as ref  # noqa: E402  the reference implementation, a test oracle (dev extra)

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int8, torch.uint8, torch.bool]


def _tensors():
    out = {}
    for i, dt in enumerate(DTYPES):
        t = torch.randn(3, 5) * 10
        out[f"t{i}.{str(dt)[6:]}"] = t.to(dt) if dt != torch.bool else t > 0
    out["scalar"] = torch.tensor(2.5)
    out["empty"] = torch.zeros(0, 4)
    return out


def test_round_trip_and_both_directions_with_reference(tmp_path):
    tensors = _tensors()
    st.save(tmp_path / "ours.safetensors", tensors, metadata={"format": "pt", "k": "v"})
    ref.save_file(tensors, str(tmp_path / "theirs.safetensors"), metadata={"format": "pt"})
    ours, meta = st.load(tmp_path / "ours.safetensors")
    assert meta == {"format": "pt", "k": "v"}
    theirs_read_by_us, _ = st.load(tmp_path / "theirs.safetensors")
    ours_read_by_them = ref.load_file(str(tmp_path / "ours.safetensors"))
    for name, t in tensors.items():
        for got in (ours[name], theirs_read_by_us[name], ours_read_by_them[name]):
            assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t)


def _file(tmp_path, header, data=b"", raw_header=None):
    raw = raw_header if raw_header is not None else json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize("case, header, data, match", [
    ("short file", None, None, "not a safetensors file"),
    ("header past end", None, None, "runs past the end"),
    ("huge header", None, None, "over the .* cap"),
    ("bad json", None, None, "not valid JSON"),
    ("not an object", [1, 2], b"", "must be a JSON object"),
    ("unknown dtype", {"a": {"dtype": "F8", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 2, "unknown dtype 'F8'"),
    ("offsets out of range", GOOD, b"\0" * 4, "out of range"),
    ("size mismatch", {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "needs 12"),
    ("overlap", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                 "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "overlap"),
    ("negative shape", {"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "non-negative"),
    ("bad metadata", {**GOOD, "__metadata__": {"x": 1}}, b"\0" * 8, "strings to strings"),
])
def test_damaged_files_give_clear_errors(tmp_path, case, header, data, match):
    if case == "short file":
        path = tmp_path / "bad.safetensors"
        path.write_bytes(b"\x01\x02")
    elif case == "header past end":
        path = tmp_path / "bad.safetensors"
        path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    elif case == "huge header":
        path = tmp_path / "bad.safetensors"
        path.write_bytes(struct.pack("<Q", 2**60) + b"{}")
    elif case == "bad json":
        path = _file(tmp_path, None, b"", raw_header=b"{not json")
    else:
        path = _file(tmp_path, header, data)
    with pytest.raises(MiniPeftError, match=match) as err:
        st.load(path)
    assert "bad.safetensors" in str(err.value)  # the message names the file


def test_duplicate_names_refused(tmp_path):
    raw = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    with pytest.raises(MiniPeftError, match="duplicate tensor name 'a'"):
        st.load(_file(tmp_path, None, b"\0" * 4, raw_header=raw))


def test_missing_file(tmp_path):
    with pytest.raises(MiniPeftError, match="cannot open"):
        st.load(tmp_path / "nope.safetensors")
