"""Summaries of ``odam evaluate explanations``: tables in the layout of the paper's Tables 1, 3a and 4, and plots.

Everything is computed from ``objects.jsonl`` and ``sanity.jsonl`` alone (:func:`summarize`), with the rank
journals beside them of a run under ``torchrun`` (:func:`odam.evaluation.journal.object_records`), so a resumed
run, an uninterrupted one and one of several processes give the same summary, apart from the measured seconds.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)

from odam._atomic import atomic_path, atomic_write  # noqa: E402
from odam.evaluation.config import METHODS  # noqa: E402
from odam.evaluation.journal import object_records  # noqa: E402

NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "drise": "D-RISE", "odam": "ODAM"}
#: Columns of ``summary.csv``, one row per method.
COLUMNS = ("method", "objects", "deletion_auc", "insertion_auc", "vea_auc", "odi_box", "odi_mask", "pg_box",
           "pg_mask", "enpg_box", "enpg_mask", "compactness", "seconds_per_object")


def summarize(out: Path) -> dict[str, Any]:
    """Write ``summary.json``, ``summary.csv``, ``summary.md``, ``curves.png`` and ``sanity.png`` in ``out``.

    ``sanity.png`` is written only when the run includes the sanity check. Percentages (ODI, PG, enPG) are
    means over objects times 100; AUCs and Compactness are means over the
    objects where they are defined (``null`` in the journal: a constant map, an object without a mask, a
    detection no longer found on the original image), with the counts in ``summary.json``.
    """
    out = Path(out)
    rows = object_records(out / "objects.jsonl", METHODS)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    summary: dict[str, Any] = {"data": config["data"], "model": config["model"], "methods": methods,
                               "rows": {}, "curves": {}, "counts": {}, "sanity": {}}
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        means, counts = _means(mine)
        summary["rows"][m], summary["counts"][m] = {"method": m, "objects": len(mine)} | means, counts
        summary["curves"][m] = {k: _mean_curve([r[k] for r in mine if r[k] is not None])
                                for k in ("deletion", "insertion", "vea")}
    # Methods that explained different objects (D-RISE usually fewer) are also compared on the shared ones.
    shared = set.intersection(*({(r["image_id"], r["ann_id"]) for r in rows if r["method"] == m} for m in methods)) \
        if methods else set()
    if any(summary["rows"][m]["objects"] > len(shared) for m in methods):
        summary["shared"] = {"objects": len(shared), "rows": {
            m: _means([r for r in rows if r["method"] == m and (r["image_id"], r["ann_id"]) in shared])[0]
            | {"method": m, "objects": len(shared)} for m in methods}}
    for m, checks in _by_method(object_records(out / "sanity.jsonl", METHODS)).items():
        summary["sanity"][m] = {"blocks": checks[0]["blocks"], "objects": len(checks),
                                "spearman": _mean_lists([c["spearman"] for c in checks]),
                                "ssim": _mean_lists([c["ssim"] for c in checks])}
    _write(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for m in methods:
        writer.writerow({k: ("" if v is None else v) for k, v in summary["rows"][m].items()})
    _write(out / "summary.csv", buffer.getvalue())
    _write(out / "summary.md", markdown(summary) + "\n")
    _plot_curves(summary, out / "curves.png")
    if summary["sanity"]:
        _plot_sanity(summary, out / "sanity.png")
    return summary


def markdown(summary: dict[str, Any]) -> str:
    """The tables of a summary as Markdown."""
    rows, counts, methods = summary["rows"], summary["counts"], summary["methods"]
    f = lambda v, d=1: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = [f"Model `{summary['model']}` on `{summary['data']}`; objects explained per method: "
             + ", ".join(f"{NAMES[m]} {rows[m]['objects']}" for m in methods) + ".", "",
             "Faithfulness (paper Table 1; AUC of the curves in `curves.png`, Deletion and Insertion in %):", "",
             "| method | Del. ↓ | Ins. ↑ | VEA ↑ |", "|---|---|---|---|"]
    lines += [f"| {NAMES[m]} | {f(rows[m]['deletion_auc'], 2)} | {f(rows[m]['insertion_auc'], 2)} "
              f"| {f(rows[m]['vea_auc'], 3)} |" for m in methods]
    lines += ["", "Object discrimination index (paper Table 3a, %):", "",
              "| method | box ↓ | mask ↓ |", "|---|---|---|"]
    lines += [f"| {NAMES[m]} | {f(rows[m]['odi_box'])} | {f(rows[m]['odi_mask'])} |" for m in methods]
    lines += ["", "Localisation (paper Table 4, %; Compactness in box half-diagonals):", "",
              "| method | PG(b) ↑ | PG(m) ↑ | enPG(b) ↑ | enPG(m) ↑ | Comp. ↓ |", "|---|---|---|---|---|---|"]
    lines += [f"| {NAMES[m]} | {f(rows[m]['pg_box'])} | {f(rows[m]['pg_mask'])} | {f(rows[m]['enpg_box'])} "
              f"| {f(rows[m]['enpg_mask'])} | {f(rows[m]['compactness'], 2)} |" for m in methods]
    lines += ["", "Cost (the explain call for an image's objects, divided by their number):", "",
              "| method | objects | seconds per object |", "|---|---|---|"]
    lines += [f"| {NAMES[m]} | {rows[m]['objects']} | {f(rows[m]['seconds_per_object'], 4)} |" for m in methods]
    undefined = [f"{NAMES[m]} {k} {rows[m]['objects'] - n}" for m in methods for k, n in counts[m].items()
                 if n < rows[m]["objects"] and k not in ("vea_auc", "pg_mask", "enpg_mask", "odi_mask")]
    if undefined:
        lines += ["", "Objects where a metric is undefined and left out of its mean: " + ", ".join(undefined) + "."]
    if "shared" in summary:
        shared = summary["shared"]["rows"]
        lines += ["", f"The same metrics on the {summary['shared']['objects']} objects that every method explained:",
                  "", "| method | Del. ↓ | Ins. ↑ | VEA ↑ | ODI box ↓ | ODI mask ↓ | PG(b) ↑ | enPG(b) ↑ | Comp. ↓ |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {NAMES[m]} | {f(r['deletion_auc'], 2)} | {f(r['insertion_auc'], 2)} | {f(r['vea_auc'], 3)} "
                  f"| {f(r['odi_box'])} | {f(r['odi_mask'])} | {f(r['pg_box'])} | {f(r['enpg_box'])} "
                  f"| {f(r['compactness'], 2)} |" for m, r in shared.items()]
    if summary["sanity"]:
        blocks = next(iter(summary["sanity"].values()))["blocks"]
        lines += ["", "Sanity check (cascading randomisation, `sanity.png`): mean Spearman / SSIM of each map with "
                  "the trained model's map, after randomising the blocks up to and including the column's:", "",
                  "| method | objects | " + " | ".join(f"`{b}`" for b in blocks) + " |",
                  "|---|---|" + "---|" * len(blocks)]
        for m, s in summary["sanity"].items():
            cells = [f"{f(r, 2)} / {f(q, 2)}" for r, q in zip(s["spearman"][1:], s["ssim"][1:], strict=True)]
            lines.append(f"| {NAMES[m]} | {s['objects']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare(runs: list[Path], method: str = "odam", oracle: bool = False) -> str:
    """One method's row from several runs' ``summary.json`` side by side (e.g. a model with and without
    Odam-Train), as a Markdown table.

    With ``oracle``, each run also gets a row for a map that is exactly each explained object's own visible
    mask (1 on it, 0 elsewhere), on the same objects: the best ODI a map can reach while covering the whole
    visible object. In a crowd, the visible parts of a person lie partly inside neighbours' full boxes, so
    box ODI has a floor well above 0.

    Raises:
        ValueError: a folder without a summary, or a run that did not measure ``method``.
    """
    f = lambda v, d=1: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = [f"{NAMES.get(method, method)} in each run (paper Tables 1, 3a and 4; %):", "",
             "| model | data | objects | ODI box ↓ | ODI mask ↓ | PG(b) ↑ | enPG(b) ↑ | enPG(m) ↑ | Comp. ↓ "
             "| Del. ↓ | Ins. ↑ | VEA ↑ |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        path = Path(run) / "summary.json"
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: cannot read a run summary ({' '.join(str(err).split())})") from None
        if method not in summary.get("rows", {}):
            raise ValueError(f"{run} has no {method!r} results (it measured {', '.join(summary.get('methods', []))})")
        r = summary["rows"][method]
        lines.append(f"| {Path(summary['model']).name} | {Path(summary['data']).name} | {r['objects']} "
                     f"| {f(r['odi_box'])} | {f(r['odi_mask'])} | {f(r['pg_box'])} | {f(r['enpg_box'])} "
                     f"| {f(r['enpg_mask'])} | {f(r['compactness'], 2)} | {f(r['deletion_auc'], 2)} "
                     f"| {f(r['insertion_auc'], 2)} | {f(r['vea_auc'], 3)} |")
        if oracle:
            o = oracle_odi(Path(run), method, summary["data"])
            lines.append(f"| own visible mask (oracle) | {Path(summary['data']).name} | {o['objects']} "
                         f"| {f(o['odi_box'])} | {f(o['odi_mask'])} | | | | | | | |")
    return "\n".join(lines)


def oracle_odi(run: Path, method: str, data: str) -> dict[str, Any]:
    """Mean ODI (box and mask, %) of each object's own visible mask used as its map, over the objects that
    ``method`` explained in ``run``; objects without a visible mask are left out."""
    from odam.data import read_dataset
    from odam.evaluation.explanations import visible_masks
    from odam.metrics import object_discrimination_index

    records = {r.id: r for r in read_dataset(data).images}
    box, mask = [], []
    for row in object_records(run / "objects.jsonl", METHODS):
        if row["method"] != method:
            continue
        record = records[row["image_id"]]
        masks = visible_masks(record)
        index = int(np.where(record.ann_ids == row["ann_id"])[0][0])
        if masks is None or not bool(masks[index].any()):
            continue
        own = masks[index].float()
        box.append(object_discrimination_index(own, index, record.clipped_boxes_tensor()).value)
        mask.append(object_discrimination_index(own, index, masks).value)
    mean = lambda v: 100 * float(np.nanmean(v)) if v else None  # noqa: E731
    return {"objects": len(box), "odi_box": mean(box), "odi_mask": mean(mask)}


def _means(rows: list[dict]) -> tuple[dict[str, float | None], dict[str, int]]:
    """Each column's mean over the rows where it is defined, and how many those are."""
    means, counts = {}, {}
    for column, key, scale in (("deletion_auc", ("deletion", "auc"), 1), ("insertion_auc", ("insertion", "auc"), 1),
                               ("vea_auc", ("vea", "auc"), 1), ("odi_box", ("odi_box",), 100),
                               ("odi_mask", ("odi_mask",), 100), ("pg_box", ("pg_box",), 100),
                               ("pg_mask", ("pg_mask",), 100), ("enpg_box", ("enpg_box",), 100),
                               ("enpg_mask", ("enpg_mask",), 100), ("compactness", ("compactness",), 1),
                               ("seconds_per_object", ("seconds",), 1)):
        values = [v for v in (_get(r, key) for r in rows) if v is not None]
        means[column] = scale * sum(float(v) for v in values) / len(values) if values else None
        counts[column] = len(values)
    return means, counts


def _get(row: dict, key: tuple[str, ...]) -> Any:
    for k in key:
        if row is None:
            return None
        row = row.get(k)
    return row


def _mean_curve(curves: list[dict]) -> dict | None:
    if not curves:
        return None
    ys = [[v for v in c["y"]] for c in curves if all(v is not None for v in c["y"])]
    return {"x": curves[0]["x"], "y": _mean_lists(ys) if ys else None, "objects": len(ys)}


def _mean_lists(lists: list[list]) -> list[float | None]:
    out = []
    for column in zip(*lists, strict=True):
        values = [v for v in column if v is not None]
        out.append(sum(values) / len(values) if values else None)
    return out


def _by_method(rows: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for r in rows:
        grouped.setdefault(r["method"], []).append(r)
    return {m: grouped[m] for m in METHODS if m in grouped}


def _plot_curves(summary: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    titles = {"deletion": "Deletion", "insertion": "Insertion", "vea": "VEA"}
    for ax, (key, title) in zip(axes, titles.items(), strict=True):
        for m in summary["methods"]:
            c = summary["curves"][m][key]
            if c and c["y"]:
                ax.plot(c["x"], [float("nan") if v is None else v for v in c["y"]], marker=".", label=NAMES[m])
        ax.set_title(title)
        ax.set_xlabel("threshold" if key == "vea" else "fraction of steps (box area deleted or inserted)")
        ax.set_ylabel("IoU with the object mask" if key == "vea" else "score / original score")
        ax.grid(alpha=0.3)
    if summary["methods"]:
        axes[0].legend()
    fig.suptitle(f"{summary['model']} on {Path(summary['data']).name}")
    fig.tight_layout()
    _save(fig, path)


def _plot_sanity(summary: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for m, s in summary["sanity"].items():
        depth = range(len(s["spearman"]))
        for ax, key in zip(axes, ("spearman", "ssim"), strict=True):
            ax.plot(depth, [float("nan") if v is None else v for v in s[key]], marker="o", label=NAMES[m])
    blocks = next(iter(summary["sanity"].values()))["blocks"] if summary["sanity"] else []
    for ax, title in zip(axes, ("Spearman rank correlation", "SSIM"), strict=True):
        ax.set_xticks(range(len(blocks) + 1), ["trained", *blocks], rotation=60, ha="right", fontsize=7)
        ax.set_title(title)
        ax.set_ylabel("with the trained model's map")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("Cascading randomisation, head first")
    fig.tight_layout()
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)


def _write(path: Path, text: str) -> None:
    atomic_write(path, text)
