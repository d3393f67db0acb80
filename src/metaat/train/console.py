"""What a training run shows on the terminal: progress bars and one line per epoch (rank 0 only)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RunConsole:
    """Stderr output of one process. ``quiet=True``: silent; ``False``: bars even off a terminal;
    ``None``: bars on a terminal, epoch lines always. Only the main process (``is_main``) prints."""

    def __init__(self, quiet: bool | None, is_main: bool) -> None:
        self.console = Console(stderr=True)
        self.quiet = bool(quiet)
        self.is_main = is_main
        self.show_bars = is_main and (quiet is False or (quiet is None and self.console.is_terminal))

    def say(self, text: str) -> None:
        """One line, unless quiet or not the main process."""
        if self.is_main and not self.quiet:
            self.console.print(text, highlight=False, soft_wrap=True)

    def progress(self) -> Progress:
        """The per-epoch progress bars (disabled unless ``show_bars``)."""
        return Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.3f}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.show_bars,
        )


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """The console line of an epoch record (a ``metrics.jsonl`` line of type ``epoch``).

    >>> epoch_line({"epoch": 1, "train": {"loss": 0.5}, "eval": {}, "cost": {"passes_per_example": 2.0},
    ...             "epoch_seconds": 3.0}, epochs=2)
    'epoch 1/2 | loss 0.5000 | 2.00 passes/ex, 3.0 s'
    """
    train, ev = record["train"], record["eval"]
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {train.get('loss', float('nan')):.4f}"]
    if "acc" in train:
        parts.append(f"train acc {100 * train['acc']:.1f}%")
    if ev:
        parts.append(f"clean {100 * ev['clean']:.1f}%")
        parts += [f"{k[len('robust/') :]} {100 * v:.1f}%" for k, v in ev.items() if k.startswith("robust/")]
    parts.append(f"{record['cost']['passes_per_example']:.2f} passes/ex, {record['epoch_seconds']:.1f} s")
    return " | ".join(parts)
