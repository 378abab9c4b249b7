"""The hand-written TensorBoard event files parse as TensorBoard's own protocol buffers."""

import glob
import struct

import pytest

from tldmi_jax.utils import metrics
from tldmi_jax.utils import tensorboard as tb

event_pb2 = pytest.importorskip('tensorboardX.proto.event_pb2')  # Test-only dependency.


def _records(path):
    data, out, i = open(path, 'rb').read(), [], 0
    while i < len(data):
        (length,) = struct.unpack('<Q', data[i : i + 8])
        assert struct.unpack('<I', data[i + 8 : i + 12])[0] == tb._masked(
            tb.crc32c(data[i : i + 8])
        )
        payload = data[i + 12 : i + 12 + length]
        crc = struct.unpack('<I', data[i + 12 + length : i + 16 + length])[0]
        assert crc == tb._masked(tb.crc32c(payload))
        out.append(event_pb2.Event.FromString(payload))
        i += 16 + length
    assert i == len(data)
    return out


def test_crc32c_known_value():
    assert tb.crc32c(b'123456789') == 0xE3069283  # The CRC-32C check value.
    assert tb.crc32c(b'') == 0


def test_metric_writer_events_parse_as_tensorboard_events(tmp_path):
    writer = metrics.MetricWriter(str(tmp_path))
    writer.write(3, {'train/loss': 0.25, 'val/acc@1': 0.5, 'note': 'text'})
    writer.write(2**40, {'train/loss': -1.5})  # A large step: a multi-byte varint.
    writer.close()
    (path,) = glob.glob(str(tmp_path / 'tensorboard' / 'events.out.tfevents.*'))
    events = _records(path)
    assert events[0].file_version == 'brain.Event:2'
    scalars = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
    assert scalars == [
        (3, 'train/loss', 0.25),
        (3, 'val/acc_at1', 0.5),
        (2**40, 'train/loss', -1.5),
    ]
    assert all(e.wall_time > 1e9 for e in events)
