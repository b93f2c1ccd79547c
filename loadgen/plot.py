"""The PNG: latency over the run (by scheduled send time) and the latency distribution."""

from __future__ import annotations

from pathlib import Path

from loadgen.stats import Recorder


def write_plot(recorder: Recorder, path: Path, title: str, closed_loop: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display here or in containers
    import matplotlib.pyplot as plt

    fig, (over_time, distribution) = plt.subplots(2, 1, figsize=(10, 8))
    fig.suptitle(title)

    ok = [(t, lat * 1000) for t, lat, good in recorder.timeline if good]
    bad = [(t, lat * 1000) for t, lat, good in recorder.timeline if not good]
    for points, label, colour in ((ok, "as expected", "tab:blue"), (bad, "unexpected", "tab:red")):
        if points:
            over_time.scatter(
                [t for t, _ in points], [v for _, v in points], s=4, label=label, color=colour
            )
    sent = "send time" if closed_loop else "scheduled send time"
    over_time.set_xlabel(f"{sent} (s from start)")
    over_time.set_ylabel(f"latency from {sent} (ms)")
    if recorder.timeline:
        over_time.set_yscale("log")
        over_time.legend(loc="upper right")
    over_time.grid(True, alpha=0.3)

    # The HDR percentile plot: x is 1/(1-p), so the tail gets as much room as the median.
    points = [
        (item.percentile_level_iterated_to, item.value_iterated_to / 1000)
        for item in recorder.latency.get_percentile_iterator(5)
        if item.percentile_level_iterated_to < 100
    ]
    if points:
        xs = [1 / (1 - p / 100) for p, _ in points]
        distribution.plot(xs, [v for _, v in points], drawstyle="steps-post")
        distribution.set_xscale("log")
        ticks = [p for p in (50, 90, 99, 99.9, 99.99) if 1 / (1 - p / 100) <= max(xs) * 1.01]
        distribution.set_xticks([1 / (1 - p / 100) for p in ticks], [f"p{p:g}" for p in ticks])
    distribution.set_xlabel("percentile")
    distribution.set_ylabel("latency (ms)")
    distribution.grid(True, alpha=0.3)

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
