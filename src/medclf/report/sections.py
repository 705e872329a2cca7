"""The built-in sections of the run report; each is left out when its files are absent."""
from __future__ import annotations

import yaml

from .. import rundir
from .context import ReportContext, esc, fmt, register_section, table


@register_section("Summary", order=10)
def summary(ctx: ReportContext) -> str | None:
    config = yaml.safe_load(ctx.text(rundir.CONFIG) or "null")
    metrics = ctx.json(rundir.TEST_METRICS)
    if config is None and metrics is None:
        return None
    rows = []
    if config:
        rows += [["data", config.get("data", {}).get("source")],
                 ["model", f"{config['model']['name']} ({config['model']['spatial_dims']}D)"],
                 ["image size", " x ".join(str(s) for s in config["data"]["image_size"])]]
    parts = []
    if metrics and metrics.get("task"):  # multilabel / regression: their section has the numbers
        parts.append(f'<p class="headline">Test split ({metrics.get("n")} images), {esc(metrics["task"])}: '
                     + (f'macro ROC AUC <b>{fmt(metrics.get("macro_roc_auc"))}</b>, mAP <b>{fmt(metrics.get("map"))}</b>'
                        if metrics["task"] == "multilabel" else
                        f'MAE <b>{fmt(metrics.get("mean_absolute_error"))}</b>, R^2 <b>{fmt(metrics.get("r2"))}</b>')
                     + "</p>")
    if metrics:
        parts.append(f'<p class="headline">Test split ({metrics.get("n")} images): accuracy '
                     f'<b>{fmt(metrics.get("accuracy"))}</b>, balanced accuracy '
                     f'<b>{fmt(metrics.get("balanced_accuracy"))}</b>, ROC AUC <b>{fmt(metrics.get("roc_auc"))}</b></p>')
        validation = ctx.json(rundir.VALIDATION_METRICS)
        if validation:
            kind = "out-of-fold predictions" if validation.get("kind") == "out_of_fold" else "validation split"
            parts.append(f'<p>Decided on ({esc(kind)}, {validation.get("n")} images): accuracy '
                         f'{fmt(validation.get("accuracy"))}, balanced accuracy '
                         f'{fmt(validation.get("balanced_accuracy"))}, ROC AUC {fmt(validation.get("roc_auc"))}</p>')
        folds = ctx.json(f"{rundir.FOLDS_DIR}/folds.json")
        if folds:
            rows.append(["ensemble", f'{folds["folds"]} fold models (images held out per fold: '
                                     f'{", ".join(str(n) for n in folds["images_per_fold"])})'])
        rows += [["checkpoint", metrics.get("checkpoint")],
                 ["checkpoint epoch", metrics.get("checkpoint_epoch")],
                 ["epochs run", metrics.get("epochs_run")],
                 ["training time (s)", metrics.get("train_time_s")]]
    if metrics and not metrics.get("task"):
        parts.append(f'<p class="headline">Test split ({metrics.get("n")} images): accuracy '
                     f'<b>{fmt(metrics.get("accuracy"))}</b>, balanced accuracy '
                     f'<b>{fmt(metrics.get("balanced_accuracy"))}</b>, ROC AUC <b>{fmt(metrics.get("roc_auc"))}</b></p>')
    elif not metrics:
        parts.append('<p class="warn">No test metrics: the run did not finish its evaluation.</p>')
    parts.append(table([r for r in rows if r[1] is not None], ["", ""]))
    return "\n".join(parts)


@register_section("Dataset", order=20)
def dataset(ctx: ReportContext) -> str | None:
    fp = ctx.json(rundir.DATASET)
    if fp is None:
        return None
    counts = fp.get("counts", {})
    classes = fp.get("class_names", [])
    splits = [s for s in ("train", "val", "test") if s in counts]
    rows = [[c] + [counts[s].get(c, 0) for s in splits] + [sum(counts[s].get(c, 0) for s in splits)]
            for c in classes]
    rows.append(["total"] + [sum(counts[s].values()) for s in splits]
                + [sum(sum(counts[s].values()) for s in splits)])
    parts = [table(rows, ["class"] + splits + ["all"])]
    facts = []
    if fp.get("median_size"):
        facts.append(f"median image size {' x '.join(str(s) for s in fp['median_size'])} pixels")
    if fp.get("formats"):
        facts.append("formats " + ", ".join(f"{k}: {v}" for k, v in fp["formats"].items()))
    if fp.get("modes"):
        facts.append("modes " + ", ".join(f"{k}: {v}" for k, v in fp["modes"].items()))
    if facts:
        parts.append(f"<p>{esc('; '.join(facts))}.</p>")
    bad = ctx.csv(rundir.BAD_FILES)
    if bad is not None and len(bad):
        parts.append(f'<p class="warn">{len(bad)} unreadable file(s) were skipped:</p>')
        parts.append(table(bad[["path", "reason"]].values.tolist(), ["file", "reason"]))
    return "\n".join(parts)


@register_section("Learning curves", order=30)
def learning_curves(ctx: ReportContext) -> str | None:
    frame = ctx.csv(rundir.METRICS)
    if frame is None and not ctx.exists(rundir.LEARNING_CURVES_PLOT):
        return None
    parts = [ctx.img(rundir.LEARNING_CURVES_PLOT, "learning curves")]
    if frame is not None and len(frame):
        columns = [c for c in ("epoch", "train_loss", "val_loss", "val_accuracy", "val_balanced_accuracy",
                               "val_roc_auc", "lr", "epoch_time_s") if c in frame]
        shown = frame[columns].tail(10)
        parts.append(f"<p>Last {len(shown)} of {len(frame)} epochs:</p>")
        parts.append(table(shown.values.tolist(), columns))
    return "\n".join(p for p in parts if p)


@register_section("Test metrics", order=40)
def test_metrics(ctx: ReportContext) -> str | None:
    metrics = ctx.json(rundir.TEST_METRICS)
    if metrics is None or metrics.get("task"):  # multilabel / regression: medclf.report.tasks
        return None
    auc = metrics.get("roc_auc_per_class", {})
    rows = [[name, m["sensitivity"], m["specificity"], m["precision"], m["f1"], auc.get(name, float("nan")),
             m["support"]] for name, m in metrics.get("per_class", {}).items()]
    parts = [table(rows, ["class", "sensitivity", "specificity", "precision", "F1", "ROC AUC (one-vs-rest)", "n"])]
    figures = [(p, c) for p, c in ((rundir.CONFUSION_MATRIX_PLOT, "confusion matrix (rows: true class)"),
                                   (rundir.ROC_PLOT, "ROC curves, one-vs-rest")) if ctx.exists(p)]
    if figures:
        parts.append('<div class="grid">' + "".join(
            f"<figure>{ctx.img(p, c)}<figcaption>{esc(c)}</figcaption></figure>" for p, c in figures) + "</div>")
    return "\n".join(parts)


@register_section("Gallery: most confident correct and wrong predictions", order=50)
def gallery(ctx: ReportContext) -> str | None:
    frame = ctx.csv(rundir.GALLERY_CSV)
    if frame is None or not len(frame):
        return None
    parts = ["<p>Heatmaps (Grad-CAM) show where the model looked for the class it predicted.</p>"]
    for kind, title in (("correct", "Most confident correct predictions"),
                        ("wrong", "Most confident wrong predictions (top losses)")):
        rows = frame[(frame.kind == kind) & frame.png.notna() & (frame.png.astype(str) != "")]
        parts.append(f"<h3>{title}</h3>")
        if not len(rows):
            parts.append('<p class="muted">none</p>')
            continue
        figures = []
        for _, row in rows.iterrows():
            caption = (f"#{row['rank']}: true {esc(row.label)}, predicted {esc(row.predicted)} "
                       f"({row.confidence:.2f}) &middot; {esc(row.path)}")
            figures.append(f"<figure>{ctx.img(f'{rundir.GALLERY_DIR}/{row.png}', str(row.path))}"
                           f"<figcaption>{caption}</figcaption></figure>")
        parts.append('<div class="grid">' + "".join(figures) + "</div>")
    return "\n".join(parts)


@register_section("Training diagnostics", order=60)
def diagnostics(ctx: ReportContext) -> str | None:
    base = rundir.DIAGNOSTICS_DIR + "/"
    warnings = (ctx.text(base + "warnings.txt") or "").strip()
    has_any = any(ctx.exists(base + f) for f in ("summary.png", "grad_norm.csv", "stats.csv"))
    if not has_any and not warnings:
        return None
    parts = []
    if warnings:
        parts.append('<div class="warn"><b>Warnings</b><ul>' + "".join(
            f"<li>{esc(line)}</li>" for line in warnings.splitlines()) + "</ul></div>")
    else:
        parts.append("<p>No warnings: no dead ReLU layers, no exploding or vanishing gradients.</p>")
    parts.append(ctx.img(base + "summary.png", "diagnostics summary"))
    dead = ctx.csv(base + "dead_relu.csv")
    if dead is not None and len(dead):
        last = dead[dead.step == dead.step.max()]
        parts.append(f"<p>Dead ReLU units at the last recorded step ({int(last.step.iloc[0])}):</p>")
        parts.append(table(last[["layer", "dead_fraction"]].values.tolist(), ["layer", "dead fraction"]))
    gifs = [k for k in ("weights", "gradients", "activations") if ctx.exists(f"{base}{k}.gif")]
    if gifs:
        parts.append("<h3>Per-layer histograms over the recorded steps</h3>")
        parts.append('<div class="grid">' + "".join(
            f"<figure>{ctx.img(f'{base}{k}.gif', k)}<figcaption>{k}</figcaption></figure>" for k in gifs) + "</div>")
    parts.append('<p class="muted">Per-step PNGs are in diagnostics/steps/; the same histograms are in '
                 "TensorBoard (tensorboard/).</p>")
    return "\n".join(p for p in parts if p)


@register_section("Architecture", order=70)
def architecture(ctx: ReportContext) -> str | None:
    text = ctx.text(rundir.ARCHITECTURE_TEXT)
    if text is None and not ctx.exists(rundir.ARCHITECTURE_GRAPH):
        return None
    parts = []
    if text:
        parts.append(f"<details open><summary>layers, output shapes and parameters</summary><pre>{esc(text)}</pre></details>")
    if ctx.exists(rundir.ARCHITECTURE_GRAPH):
        parts.append(f"<details open><summary>graph</summary>{ctx.img('architecture.png', 'model graph', '700px')}</details>")
    return "\n".join(parts)


@register_section("Configuration", order=90)
def configuration(ctx: ReportContext) -> str | None:
    text = ctx.text(rundir.CONFIG)
    if text is None:
        return None
    return ("<p>Every setting of the run, resolved (repeat it with <code>--config config.yaml</code>):</p>"
            f"<details><summary>config.yaml</summary><pre>{esc(text)}</pre></details>")

