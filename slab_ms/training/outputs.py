"""What a ``train.py`` run writes beside its checkpoints: the resolved options and a per-epoch metrics table.

``<ckpt_dir>/<model>-config.yaml`` holds every option of the run as ``train.py`` resolved it (recipe, MindCV
keys translated, command line, the device chosen), in a form ``train.py -c`` reads back; it is rewritten
atomically at each start (a resumed run records the options it resumed with).

``<ckpt_dir>/<model>-metrics.csv`` gets one row per finished training epoch: ``epoch, loss, top1, top5, gamma,
lr, img_per_s`` (top-1/top-5 empty in epochs without validation). A row is appended with one write and fsync;
at each start the table is cut back, atomically, to the complete rows of the epochs the run resumes after, so a
killed and resumed run has each epoch exactly once, and a torn last line never survives.
"""
import csv
import io
import os

import yaml

from ..utils import atomic_output, reporting_disk_full

__all__ = ["save_config", "run_output_path", "MetricsLog", "METRICS_COLUMNS"]

METRICS_COLUMNS = ("epoch", "loss", "top1", "top5", "gamma", "lr", "img_per_s")


def run_output_path(ckpt_dir, model, what):
    """``<ckpt_dir>/<model>-<what>``: where a run keeps its ``config.yaml`` and ``metrics.csv``."""
    return os.path.join(ckpt_dir, f"{model}-{what}")


def save_config(path, options):
    """Write ``options`` (``TrainOptions``) as a flat yaml recipe, atomically."""
    text = yaml.safe_dump(options.as_dict(), sort_keys=True, allow_unicode=True)
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return path


def _number(value):
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


class MetricsLog:
    """The metrics table of one run (``path``); see the module docstring."""

    def __init__(self, path):
        self.path = path

    def rows(self):
        """The complete rows as dicts of strings (a torn or foreign line is left out)."""
        if not os.path.isfile(self.path):
            return []
        with open(self.path, encoding="utf-8", newline="") as f:
            text = f.read()
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines = lines[:-1]  # the write of a killed run
        reader = csv.reader(lines)
        header = next(reader, None)
        if header is None or tuple(header) != METRICS_COLUMNS:
            return []
        rows = []
        for row in reader:
            if len(row) == len(METRICS_COLUMNS) and row[0].isdigit():
                rows.append(dict(zip(METRICS_COLUMNS, row)))
        return rows

    def restart(self, epochs_done):
        """Keep the rows of epochs 1..``epochs_done`` (those the run resumes after), header first."""
        kept = [r for r in self.rows() if int(r["epoch"]) <= epochs_done]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(METRICS_COLUMNS)
        for row in kept:
            writer.writerow([row[c] for c in METRICS_COLUMNS])
        with atomic_output(self.path) as tmp:
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                f.write(buffer.getvalue())
        return kept

    def append(self, epoch, loss, top1, top5, gamma, lr, img_per_s):
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(
            [_number(v) for v in (epoch, loss, top1, top5, gamma, lr, img_per_s)])
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            with reporting_disk_full(self.path):  # a torn row is cut at the next start (restart)
                os.write(fd, buffer.getvalue().encode("utf-8"))
                os.fsync(fd)
        finally:
            os.close(fd)
