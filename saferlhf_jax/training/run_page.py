"""One run's results page (OUT/results.md) and its curves (OUT/curves.png), written by `Run.finish`."""

from __future__ import annotations

import pathlib


def fmt(v) -> str:
    """A number as a page shows it: 4 significant digits for floats."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def plot_curves(rows: list[dict], keys, path: pathlib.Path) -> bool:
    """One panel per metric key found in `rows` (metrics.jsonl rows), against their `step`; `eval/<key>` points are
    drawn on the `<key>` panel when both exist (the supervised stages' eval/loss on the loss panel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [k for k in keys if any(isinstance(r.get(k), (int, float)) for r in rows)]
    panels = [k for k in present if not (k.startswith("eval/") and k.split("/", 1)[1] in present)]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3), squeeze=False)
    for ax, key in zip(axes[0], panels):
        for k, style in ((key, "-"), (f"eval/{key}", "o--")):
            pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=k)
        ax.set_title(key.split("/", 1)[-1])
        ax.set_xlabel("step")
        if key in ("train/cost", "eval/cost"):
            ax.axhline(0.0, color="k", linestyle="--", linewidth=0.8)
        if any(f"eval/{key}" in r for r in rows):
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_run_page(out, title: str, cfg, summary: dict, images: tuple[str, ...] = ()) -> pathlib.Path:
    """results.md for one run: what ran, the final metrics, the pictures, the settings."""
    out = pathlib.Path(out)
    lines = [f"# {title}", "", f"Output directory: `{out}`.", ""]
    scalars = lambda d: {k: v for k, v in (d or {}).items() if isinstance(v, (int, float))}  # noqa: E731
    for name in ("train", "last", "eval"):
        block = scalars(summary.get(name))
        if block:
            lines += [f"## {'final train metrics' if name in ('train', 'last') else 'evaluation'}", "",
                      "| metric | value |", "|---|---|"] + [f"| {k} | {fmt(v)} |" for k, v in block.items()] + [""]
    for key in ("steps", "iterations", "rl_steps", "seconds", "export", "data_counts", "prompt_counts",
                "skipped_updates"):
        if key in summary:
            lines.append(f"- {key}: {summary[key]}")
    lines.append("")
    for image in images:
        if (out / image).is_file():
            lines += [f"![{image}]({image})", ""]
    if summary.get("eval_samples"):
        lines += ["## evaluation answers (first prompts)", ""] + list(summary["eval_samples"]) + [""]
    lines += ["## Settings", "", "```json", cfg.to_json_best_effort(indent=2), "```", ""]
    path = out / "results.md"
    path.write_text("\n".join(lines))
    return path
