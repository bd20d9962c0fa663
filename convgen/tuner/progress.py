"""What a campaign shows: a progress line, a summary table and a tuning-curve plot."""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """One status line, redrawn in place on a terminal (a line per batch otherwise).

    ``[3/11 r4_3x3] trials 96/400 | best 45.2 GFLOP/s (57% of peak) | 2:31 elapsed, ETA 7:12``
    """

    def __init__(self, peak_gflops: float | None = None, stream: TextIO | None = None) -> None:
        self.peak = peak_gflops
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = time.perf_counter()
        self.measured = 0
        self.measure_s = 0.0

    def start(self, campaign: Any, trials: int, time_limit: float | None = None) -> None:
        """A campaign of ``trials`` trials (``sys.maxsize``: unlimited) and ``time_limit``
        seconds (``None``: unlimited) begins; says what was resumed."""
        self.trials = trials
        self.time_limit = time_limit
        self.t0 = time.perf_counter()
        done = campaign.total_trials()
        if done:
            spent = f", {_clock(campaign.spent_before)} spent" if campaign.spent_before else ""
            print(f"resumed {done} trials{spent} from {campaign.records}", file=self.stream)

    def update(self, campaign: Any, task: Any, seconds: float, n: int) -> None:
        self.measured += n
        self.measure_s += seconds
        total = campaign.total_trials()
        limited = self.trials < sys.maxsize
        left = max(self.trials - total, 0)
        eta = self.measure_s / max(self.measured, 1) * left if limited else math.inf
        done = total / max(self.trials, 1) if limited else 0.0
        if self.time_limit:
            eta = min(eta, max(self.time_limit - campaign.spent(), 0.0))
            done = max(done, min(campaign.spent() / self.time_limit, 1.0))
        idx = campaign.tasks.index(task) + 1
        width = 20
        fill = int(width * min(done, 1))
        bar = "#" * fill + "-" * (width - fill)
        best = f"best {task.best_gflops:.1f} GFLOP/s" if task.best_cost else "no valid kernel yet"
        if self.peak and task.best_cost:
            best += f" ({100 * task.best_gflops / self.peak:.0f}% of peak)"
        count = f"trials {total}/{self.trials}" if limited else f"trials {total}"
        budget = f" of {_clock(self.time_limit)}" if self.time_limit else ""
        self._write(f"[{bar}] [{idx}/{len(campaign.tasks)} {task.name}] {count} | {best} | "
                    f"{_clock(time.perf_counter() - self.t0)} elapsed{budget}, ETA {_clock(eta)}")

    def refining(self, done: int, layers: int, name: str, seconds: float) -> None:
        """The line while each layer's leaders are timed again after the search."""
        self._write(f"re-timing each layer's best configs: {done}/{layers} layers | {name} | "
                    f"{_clock(seconds)} elapsed")

    def _write(self, line: str) -> None:
        if self.tty:
            self.stream.write("\r" + line[:200].ljust(120))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self, campaign: Any) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def summary_table(results: list[Any], peak: float | None) -> str:
    """A text table: one row per layer with trials, best GFLOP/s, % of peak, speed-up over default."""
    head = f"{'layer':<22} {'workload':<40} {'template':<14} {'trials':>6} {'GFLOP/s':>8} {'% peak':>7} {'vs default':>10}"
    lines = [head, "-" * len(head)]
    total_best = total_default = 0.0
    for r in results:
        gf = f"{r.gflops:8.1f}" if r.cost else f"{'-':>8}"
        pct = f"{100 * r.gflops / peak:6.0f}%" if (peak and r.cost) else f"{'-':>7}"
        vs = f"{r.default_cost / r.cost:9.2f}x" if (r.cost and r.default_cost) else f"{'-':>10}"
        lines.append(f"{r.name[:22]:<22} {r.spec.describe()[:40]:<40} {(r.template or '-')[:14]:<14} {r.trials:>6} {gf} {pct} {vs}")
        if r.cost and r.default_cost:
            total_best += r.cost * r.weight
            total_default += r.default_cost * r.weight
    if total_best:
        lines.append(f"whole network: {total_best * 1e3:.3f} ms tuned vs {total_default * 1e3:.3f} ms default "
                     f"({total_default / total_best:.2f}x)")
    return "\n".join(lines)


def plot_curves(tasks: list[Any], path: str, title: str = "") -> str | None:
    """Best GFLOP/s vs trials, one line per task; returns the path, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(11, 5.5))
    for i, t in enumerate(t for t in tasks if t.curve):
        xs, ys = zip(*t.curve)
        label = t.name if t.name.endswith(t.template.name) else f"{t.name} ({t.template.name})"
        # 10 colours in matplotlib's cycle: past them, another line style keeps lines apart
        ax.step(xs, ys, where="post", label=label, linestyle=("-", "--", ":")[i // 10 % 3])
    ax.set_xlabel("trials (this layer)")
    ax.set_ylabel("best GFLOP/s")
    ax.set_title(title or "convgen tuning curves")
    ax.grid(alpha=0.3)
    if len(tasks) <= 40:  # beside the axes, so it hides no curve
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
