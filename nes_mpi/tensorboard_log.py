"""TensorBoard scalars (--tensorboard): every numeric column of each log row, one point per generation.

Rank 0 writes RUN_DIR/tb/events.out.tfevents.* with the `tensorboard` package's
record writer and protobufs (torch.utils.tensorboard would load torch, ~190 MB).
The checkpoint's history is the truth, as for log.csv: when a run starts or
resumes, the event files are replaced by one rebuilt from the history, and new
rows are appended to it. Generations written after the last checkpoint of a
killed run are thus dropped and written again, never twice.
"""
from __future__ import annotations

import math
import os
import socket
import time
from pathlib import Path

TB_DIR = "tb"
_EVENTS = "events.out.tfevents."  # TensorBoard reads the files whose names contain "tfevents"


def tensorboard_dir(run_dir) -> Path:
    return Path(run_dir) / TB_DIR


class TensorBoardLog:
    def __init__(self, run_dir, history_rows: list[dict]):
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event, self._summary, self._record_writer = event_pb2.Event, summary_pb2.Summary, RecordWriter
        d = tensorboard_dir(run_dir)
        d.mkdir(parents=True, exist_ok=True)
        stale = [p for p in d.iterdir() if _EVENTS in p.name]
        self.path = d / f"{_EVENTS}{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.nes_mpi"
        tmp = d / ".rebuild.tmp"  # no "tfevents" in the name: TensorBoard ignores it until it is complete
        with open(tmp, "wb") as fh:
            writer = RecordWriter(fh)
            writer.write(self._event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
            for row in history_rows:
                self._write(writer, row)
        for p in stale:
            p.unlink()
        os.replace(tmp, self.path)

    def append(self, row: dict) -> None:
        with open(self.path, "ab") as fh:
            self._write(self._record_writer(fh), row)

    def _write(self, writer, row: dict) -> None:
        values = [self._summary.Value(tag=k, simple_value=float(v)) for k, v in row.items()
                  if k != "generation" and not k.startswith("_") and _is_number(v)]
        event = self._event(wall_time=time.time(), step=int(row["generation"]), summary=self._summary(value=values))
        writer.write(event.SerializeToString())


def _is_number(v) -> bool:
    try:
        return not isinstance(v, str) and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
