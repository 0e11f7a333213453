"""A training run's log: metrics.csv (one row per epoch), an optional TensorBoard stream, a curve PNG."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from medpipe.io.atomic import write_text_atomic, write_with


class RunLog:
    """Appends epoch rows to ``metrics.csv`` (rewritten atomically) and mirrors them to TensorBoard if present."""

    def __init__(self, run_dir: Path, rows: list[dict[str, Any]] | None = None, tensorboard: bool = True) -> None:
        self.path = run_dir / "metrics.csv"
        self.png = run_dir / "training_curve.png"
        self.rows: list[dict[str, Any]] = list(rows or [])
        self._tb: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            except ImportError:
                self._tb = None

    @property
    def tensorboard(self) -> bool:
        """True when TensorBoard event files are being written (the ``tensorboard`` package is installed)."""
        return self._tb is not None

    def add(self, row: dict[str, Any]) -> None:
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        fields: list[str] = []
        for r in self.rows:
            fields += [k for k in r if k not in fields]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(self.rows)
        write_text_atomic(self.path, buf.getvalue())
        if self._tb is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, int | float):
                    self._tb.add_scalar(key, value, row["epoch"])
            self._tb.flush()

    def plot(self) -> None:
        """Loss and validation Dice against epoch, as a PNG in the run folder."""
        import matplotlib.pyplot as plt

        fig = curve_figure(self.rows)
        write_with(self.png, lambda p: fig.savefig(p, format="png"))
        plt.close(fig)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of an existing metrics.csv (numbers parsed), for resuming."""
    if not path.is_file():
        return []
    out = []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            parsed: dict[str, Any] = {}
            for k, v in row.items():
                try:
                    parsed[k] = int(v) if k == "epoch" else (float(v) if v != "" else None)
                except ValueError:
                    parsed[k] = v
            out.append(parsed)
    return out


#: The loss line's colour and the Dice lines' colours: loss in dark blue, Dice in hues far from it (orange, green,
#: red, purple, brown, pink), so that no Dice line can be taken for the loss.
LOSS_COLOUR = "#1f3b73"
DICE_COLOURS = ("#e6550d", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


#: Validation columns of a classification run and their legend names.
CLASSIFICATION_KEYS = {"val_auc": "ROC AUC", "val_accuracy": "accuracy"}


def curve_figure(rows: list[dict[str, Any]]) -> Any:
    """The training-curve figure (matplotlib, Agg): train loss (left axis) and validation Dice (right axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, ax1 = plt.subplots(figsize=(7, 3.8), dpi=110)
    ax1.plot(epochs, [r["train_loss"] for r in rows], color=LOSS_COLOUR, lw=2, label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss", color=LOSS_COLOUR)
    ax2 = ax1.twinx()
    dice_keys = sorted({k for r in rows for k in r if k.startswith("val_dice_") or k in CLASSIFICATION_KEYS})
    for i, key in enumerate(dice_keys):
        pts = [(r["epoch"], r[key]) for r in rows if r.get(key) not in (None, "")]
        if pts:
            ax2.plot(*zip(*pts, strict=False), marker="o", ms=3, color=DICE_COLOURS[i % len(DICE_COLOURS)],
                     ls="--" if key == "val_dice_mean" else "-",
                     label=CLASSIFICATION_KEYS.get(key, key.replace("val_dice_", "Dice ")))
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("validation AUC / accuracy" if set(dice_keys) <= set(CLASSIFICATION_KEYS) else "validation Dice")
    handles = ax1.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax1.legend(handles, [str(h.get_label()) for h in handles], loc="center right", fontsize=8)
    ax1.grid(alpha=0.3)
    fig.tight_layout()
    return fig
