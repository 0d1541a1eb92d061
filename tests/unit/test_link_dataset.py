"""The bridge's on-disk sample dataset: append-only, bounded, repaired after a torn write."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fedge.roles import load_npz
from firmware_bridge.dataset import SampleDataset
from firmware_bridge.link import Dtype, Sample


def sample(i: int, label: int | None = 0, shape=(2, 2)) -> Sample:
    n = int(np.prod(shape))
    return Sample.from_values([i * 10 + k for k in range(n)], shape, Dtype.INT16, label)


def test_samples_survive_a_restart_in_order(tmp_path):
    ds = SampleDataset(tmp_path, max_samples=100)
    for i in range(7):
        ds.append(sample(i, label=i % 3), "mcu-1", when=1000.0 + i)
    again = SampleDataset(tmp_path, max_samples=100)
    stored = list(again.samples())
    assert len(again) == 7
    assert [s.label for s in stored] == [0, 1, 2, 0, 1, 2, 0]
    assert stored[3].values().tolist() == [[30, 31], [32, 33]]
    assert stored[3].device_id == "mcu-1" and stored[3].time == 1003.0


def test_arrays_flatten_scale_and_keep_labelled_samples(tmp_path):
    ds = SampleDataset(tmp_path)
    ds.append(sample(1, label=4), "m")
    ds.append(sample(2, label=None), "m")
    ds.append(Sample.from_values([0.5, -0.5], (2,), Dtype.FLOAT32, 1), "m")  # other shape
    ds.append(sample(3, label=7), "m")
    x, y = ds.arrays(scale=0.5)
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert x.tolist() == [[5, 5.5, 6, 6.5], [15, 15.5, 16, 16.5]]
    assert y.tolist() == [4, 7]
    x_all, y_all = ds.arrays(labelled_only=False)
    assert x_all.shape == (3, 4) and y_all.tolist() == [4, -1, 7]


def test_it_stays_bounded_by_dropping_the_oldest_segment(tmp_path):
    ds = SampleDataset(tmp_path, max_samples=10, segment_samples=4)
    for i in range(25):
        ds.append(sample(i), "m")
        assert len(ds) <= 10
    labels_kept = [s.values()[0, 0] // 10 for s in ds.samples()]
    assert labels_kept == list(range(25 - len(ds), 25))  # the newest, in order
    assert len(list(tmp_path.glob("samples-*.bin"))) <= 3


def test_a_torn_write_is_cut_off_and_appends_continue(tmp_path):
    ds = SampleDataset(tmp_path)
    for i in range(3):
        ds.append(sample(i), "m")
    segment = next(tmp_path.glob("samples-*.bin"))
    data = segment.read_bytes()
    segment.write_bytes(data + data[:20])  # half a record, as after a power cut
    again = SampleDataset(tmp_path)
    assert len(again) == 3 and again.damaged_records == 1
    again.append(sample(9), "m")
    assert [s.values()[0, 0] for s in SampleDataset(tmp_path).samples()] == [0, 10, 20, 90]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE as on Linux")
def test_an_append_that_fails_half_way_leaves_no_torn_record_behind(tmp_path):
    """A full disk writes part of a record and fails. The bridge counts that sample as
    refused and goes on appending; those later samples must still be there after a
    restart, not hidden behind the torn record. A file size limit makes the real write
    stop half way (in a child process, so the limit touches nothing else)."""
    script = textwrap.dedent("""
        import resource, sys
        from pathlib import Path
        from firmware_bridge.dataset import SampleDataset
        from firmware_bridge.link import Dtype, Sample
        def sample(i):
            return Sample.from_values([i] * 4, (2, 2), Dtype.INT16, 1)
        directory = Path(sys.argv[1])
        ds = SampleDataset(directory)
        for i in range(3):
            ds.append(sample(i), "m")
        size = next(directory.glob("samples-*.bin")).stat().st_size
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 20, hard))  # room for 20 bytes
        try:
            ds.append(sample(3), "m")
        except OSError:
            print("refused")
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # the disk has room again
        for i in range(4, 7):
            ds.append(sample(i), "m")
    """)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "refused", done.stderr
    again = SampleDataset(tmp_path)
    assert [s.values()[0, 0] for s in again.samples()] == [0, 1, 2, 4, 5, 6]
    assert again.damaged_records == 0


def test_a_flipped_byte_stops_reading_at_the_damage(tmp_path):
    ds = SampleDataset(tmp_path)
    for i in range(4):
        ds.append(sample(i), "m")
    segment = next(tmp_path.glob("samples-*.bin"))
    data = bytearray(segment.read_bytes())
    data[len(data) // 2 + 10] ^= 0xFF
    segment.write_bytes(bytes(data))
    again = SampleDataset(tmp_path)
    assert 1 <= len(again) < 4  # the records before the damage only
    assert len(list(again.samples())) == len(again)


def test_export_npz_is_what_fedge_device_reads(tmp_path):
    ds = SampleDataset(tmp_path / "d")
    for i in range(5):
        ds.append(sample(i, label=i), "m")
    assert ds.export_npz(tmp_path / "out.npz") == 5
    x, y = load_npz(tmp_path / "out.npz")
    assert x.shape == (5, 4) and y.tolist() == [0, 1, 2, 3, 4]


def test_an_empty_dataset_gives_empty_arrays(tmp_path):
    x, y = SampleDataset(tmp_path).arrays()
    assert x.shape == (0, 0) and y.shape == (0,)


@pytest.mark.parametrize(("max_samples", "segment"), [(0, None), (10, 11)])
def test_bad_bounds_are_refused(tmp_path, max_samples, segment):
    with pytest.raises(ValueError):
        SampleDataset(tmp_path, max_samples=max_samples, segment_samples=segment)
