"""Report sections of multilabel and regression runs: the test metrics with their intervals,
the baseline, the per-finding table and the plots (ROC and precision-recall per finding;
predicted vs true and Bland-Altman)."""
from __future__ import annotations

from .. import rundir
from .context import ReportContext, esc, fmt, register_section, table

PR_PLOT, SCATTER_PLOT, BLAND_ALTMAN_PLOT = "plots/pr_curves.png", "plots/predicted_vs_true.png", "plots/bland_altman.png"


def _ci(metrics: dict, key: str) -> str:
    value = metrics.get(f"{key}_ci")
    return f"{fmt(metrics.get(key))} [{fmt(value[0])}, {fmt(value[1])}]" if value else fmt(metrics.get(key))


def _figures(ctx: ReportContext, items) -> str:
    shown = [(p, c) for p, c in items if ctx.exists(p)]
    return '<div class="grid">' + "".join(f"<figure>{ctx.img(p, c)}<figcaption>{esc(c)}</figcaption></figure>"
                                          for p, c in shown) + "</div>" if shown else ""


@register_section("Test metrics (multilabel findings)", order=41)
def multilabel_section(ctx: ReportContext) -> str | None:
    metrics = ctx.json(rundir.TEST_METRICS)
    if not metrics or metrics.get("task") != "multilabel":
        return None
    baseline = metrics.get("baseline", {})
    head = table([["macro ROC AUC", _ci(metrics, "macro_roc_auc")], ["micro ROC AUC", _ci(metrics, "micro_roc_auc")],
                  ["mAP (macro average precision)", _ci(metrics, "map")],
                  ["micro average precision", _ci(metrics, "micro_average_precision")],
                  ["baseline mAP (training prevalence for every image)", fmt(baseline.get("map"))]],
                 ["test split", "value [95 % bootstrap CI]"])
    rows = [[name, m["n_positive"], m["prevalence"], m["roc_auc"], m["average_precision"], m["threshold"],
             m["sensitivity"], m["specificity"], m["ece"]] for name, m in metrics["per_label"].items()]
    per_label = table(rows, ["finding", "positives", "prevalence", "ROC AUC", "average precision",
                             "threshold (validation)", "sensitivity", "specificity", "ECE"])
    figures = _figures(ctx, [(rundir.ROC_PLOT, "ROC curve per finding"), (PR_PLOT, "precision-recall per finding")])
    return "\n".join([head, per_label, figures])


@register_section("Test metrics (regression)", order=41)
def regression_section(ctx: ReportContext) -> str | None:
    metrics = ctx.json(rundir.TEST_METRICS)
    if not metrics or metrics.get("task") != "regression":
        return None
    baseline = metrics.get("baseline", {})
    interval = metrics.get("interval") or {}
    rows = [["mean absolute error", _ci(metrics, "mean_absolute_error")],
            ["root mean squared error", _ci(metrics, "root_mean_squared_error")],
            ["R^2", _ci(metrics, "r2")], ["Pearson r", _ci(metrics, "pearson_r")],
            ["bias (mean predicted - true)", fmt(metrics.get("bias"))],
            ["baseline MAE (training mean for every image)", fmt(baseline.get("mean_absolute_error"))],
            ["MAE / baseline MAE", fmt(metrics.get("mae_ratio_to_baseline"))],
            [f"prediction interval ({fmt(interval.get('level'), 2)}, split conformal): half-width",
             fmt(interval.get("half_width"))],
            ["interval coverage on test", fmt(interval.get("coverage"))]]
    figures = _figures(ctx, [(SCATTER_PLOT, "predicted vs true"), (BLAND_ALTMAN_PLOT, "Bland-Altman")])
    return "\n".join([table(rows, [f"test split ({metrics.get('target')})", "value [95 % bootstrap CI]"]), figures])
