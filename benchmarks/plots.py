"""PNG plots of a suite run, drawn from its results (``plot_all(result, out_dir)``).

``python benchmarks/plots.py RESULTS.json [OUT_DIR]`` redraws them from a saved JSON file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OURS, CELERY, OTHER = "#2b6cb0", "#dd6b20", "#718096"


def _color(case: str) -> str:
    if case.startswith("celery"):
        return CELERY
    if case.startswith(("raw", "ideal")):
        return OTHER
    return OURS


def plot_all(result: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    figures = result["figures"]
    subtitle = _subtitle(result)
    written = []
    for name, draw in (
        ("throughput", _throughput),
        ("latency", _latency),
        ("scale", _scale),
        ("fanout", _fanout),
    ):
        fig = draw(figures)
        if fig is None:
            continue
        fig.text(0.01, -0.04, subtitle, fontsize=7, color="#4a5568")
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        written.append(path)
        import matplotlib.pyplot as plt

        plt.close(fig)
    return written


def _subtitle(result: dict[str, Any]) -> str:
    m = result["machine"]
    v = m["versions"]
    return (
        f"{m['date'][:10]}, commit {m['commit']}, {m['cpu_count']} CPUs, Python {m['python']}, "
        f"Django {v.get('Django')}, Ray {v.get('ray')}, Celery {v.get('celery')}, "
        f"kombu {v.get('kombu')}{' (--quick)' if result['quick'] else ''}"
    )


def _bars(ax, labels: list[str], values: list[float], colors: list[str], unit: str) -> None:  # type: ignore[no-untyped-def]
    positions = list(range(len(labels)))[::-1]
    ax.barh(positions, values, color=colors)
    ax.set_yticks(positions, labels, fontsize=8)
    ax.set_xlabel(unit)
    top = max(values) if values else 1
    for y, value in zip(positions, values, strict=True):
        ax.text(
            value + top * 0.01,
            y,
            f"{value:.0f}" if value >= 10 else f"{value:.2f}",
            va="center",
            fontsize=7,
        )
    ax.set_xlim(0, top * 1.15)
    ax.grid(axis="x", alpha=0.3)


def _throughput(figures: dict[str, Any]):  # type: ignore[no-untyped-def]
    import matplotlib.pyplot as plt

    groups = [
        ("e2e-redis", "no-op, producer + worker, Redis"),
        ("e2e-rabbitmq", "no-op, producer + worker, RabbitMQ"),
        ("sync", "no-op, --sync vs Celery solo, Redis"),
        ("postgres", "no-op, pre-enqueued drain, django:// PostgreSQL"),
        ("cpu", "20 ms CPU-bound tasks"),
    ]
    labels, values, colors = [], [], []
    for row, title in groups:
        for case, fig in figures.get(row, {}).items():
            if "tasks_per_s" in fig:
                labels.append(f"{title}\n{case}")
                values.append(fig["tasks_per_s"])
                colors.append(_color(case))
    if not values:
        return None
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(values) + 1.5))
    _bars(ax, labels, values, colors, "tasks/s (higher is better)")
    ax.set_title("Throughput by mode and broker: django-ray (blue) vs Celery (orange)")
    return fig


def _latency(figures: dict[str, Any]):  # type: ignore[no-untyped-def]
    import matplotlib.pyplot as plt

    idle = figures.get("latency", {})
    job = figures.get("job", {})
    if not idle and not job:
        return None
    panels = [
        (cases, title)
        for cases, title in (
            (idle, "enqueue -> result stored, idle worker"),
            (job, "Ray Job mode vs raw Jobs API"),
        )
        if cases
    ]
    ratios = [max(1.3, len(cases) * 0.75) for cases, _ in panels]
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(3 + 2 * sum(ratios), 4),
        squeeze=False,
        gridspec_kw={"width_ratios": ratios},
    )
    for ax, (cases, title) in zip(axes[0], panels, strict=True):
        names = list(cases)
        width = 0.38
        for i, (key, alpha) in enumerate((("p50_ms", 1.0), ("p95_ms", 0.5))):
            xs = [n + (i - 0.5) * width for n in range(len(names))]
            ys = [cases[n].get(key, 0) for n in names]
            ax.bar(
                xs,
                ys,
                width,
                color=[_color(n) for n in names],
                alpha=alpha,
                label=key.removesuffix("_ms"),
            )
            for x, y in zip(xs, ys, strict=True):
                if y:
                    ax.text(
                        x,
                        y,
                        f"{y:.0f}" if y >= 10 else f"{y:.1f}",
                        ha="center",
                        va="bottom",
                        fontsize=7,
                    )
        ax.set_xticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=7)
        ax.set_ylabel("ms (lower is better)")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Latency percentiles (p50 solid, p95 light)")
    fig.tight_layout()
    return fig


def _scale(figures: dict[str, Any]):  # type: ignore[no-untyped-def]
    import matplotlib.pyplot as plt

    rows = figures.get("scale", {})
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for nodes, style in (("1 node", "o-"), ("2 nodes", "s--")):
        points = sorted(
            (int(case.split(", ")[1].split()[0]), f["tasks_per_s"])
            for case, f in rows.items()
            if case.startswith(nodes + ",")
        )
        if points:
            ax.plot(*zip(*points, strict=True), style, label=f"Ray cluster, {nodes}")
            for x, y in points:
                ax.annotate(
                    f"{y:.0f}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7
                )
    ax.set_xlabel("--cluster workers")
    ax.set_ylabel("no-op tasks/s")
    ax.set_xticks(sorted({int(c.split(", ")[1].split()[0]) for c in rows}))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Scale: workers against one Ray cluster (PostgreSQL, Redis)")
    return fig


def _fanout(figures: dict[str, Any]):  # type: ignore[no-untyped-def]
    import matplotlib.pyplot as plt

    rows = figures.get("fanout", {})
    if len(rows) < 2:
        return None
    fig, ax = plt.subplots(figsize=(8, 2.6))
    names = list(rows)
    _bars(
        ax,
        names,
        [rows[n]["seconds"] for n in names],
        [_color(n) for n in names],
        "seconds (lower is better)",
    )
    items = next(iter(rows.values()))["items"]
    ax.set_title(f"Fan-out: {items} items of 5 ms")
    return fig


if __name__ == "__main__":
    source = Path(sys.argv[1])
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else source.parent
    for path in plot_all(json.loads(source.read_text()), target):
        print(path)
