"""Trains the late-risk XGBoost model on extracted features and exports it to ONNX.

Inputs: the feature CSV written by `edge-host features` (the real features module, so training
and serving compute features with one implementation) and the task table from simulate.py.
Outputs (next to this file): model.onnx, metrics.json, testdata/parity.csv, MODEL_CARD.md.
"""

import argparse
import csv
import json
import math
import pathlib
import tomllib

import numpy as np
import onnx
import onnxmltools
import onnxruntime as ort
import xgboost as xgb
from onnxmltools.convert.common.data_types import FloatTensorType
from sklearn.metrics import precision_score, recall_score, roc_auc_score

HERE = pathlib.Path(__file__).resolve().parent
THRESHOLDS = (0.5, 0.7)
PARAMS = dict(
    n_estimators=200,
    max_depth=6,
    learning_rate=0.1,
    subsample=0.8,
    colsample_bytree=0.8,
    tree_method="hist",
    random_state=42,
    n_jobs=2,
)


def feature_specs():
    with open(HERE / "features.toml", "rb") as f:
        return tomllib.load(f)["feature"]


def feature_names():
    return [feat["name"] for feat in feature_specs()]


def load(features_csv, tasks_csv, names):
    tasks = {}
    with open(tasks_csv, newline="") as f:
        for row in csv.DictReader(f):
            tasks[row["task_id"]] = (row["split"], int(row["late"]))
    with open(features_csv, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        expected = ["event_id", "task_id"] + names
        if header != expected:
            raise SystemExit(f"feature columns {header[2:]} differ from features.toml {names}")
        rows, labels, splits, phases = [], [], [], []
        phase_col = names.index("phase")
        for r in reader:
            split, late = tasks[r[1]]
            values = [float(v) if v != "" else math.nan for v in r[2:]]
            rows.append(values)
            labels.append(late)
            splits.append(split)
            phases.append(values[phase_col])
    return (np.asarray(rows, dtype=np.float32), np.asarray(labels), np.asarray(splits), np.asarray(phases))


def metrics(y, p):
    out = {"rows": int(len(y)), "positive_rate": float(y.mean()), "auc": float(roc_auc_score(y, p))}
    for t in THRESHOLDS:
        pred = p > t
        out[f"precision@{t}"] = float(precision_score(y, pred, zero_division=0))
        out[f"recall@{t}"] = float(recall_score(y, pred, zero_division=0))
        out[f"flagged@{t}"] = float(pred.mean())
    return out


BASELINE_BINS = 10


def binned(values, edges):
    """Shares of `values` in the bins `edges` split them into (a value equal to an edge goes
    above it, as the aggregator bins), then the share of missing values."""
    present = values[~np.isnan(values)]
    counts = np.bincount(np.searchsorted(edges, present, side="right"), minlength=len(edges) + 1)
    shares = list(counts / len(values)) + [float(np.isnan(values).sum()) / len(values)]
    return [round(float(s), 6) for s in shares]


def bin_edges(values):
    """Deciles of the present values. A feature with few distinct values gets a bin for each,
    and one below and one above them all, so a value training never had (a constant feature
    that varies in the field) is seen as drift."""
    present = values[~np.isnan(values)]
    distinct = np.unique(present.astype(np.float32))
    if len(distinct) <= BASELINE_BINS + 2:
        above = np.nextafter(distinct[-1], np.float32(np.inf))
        return [float(v) for v in distinct] + [float(above)]
    qs = np.quantile(present, np.linspace(0, 1, BASELINE_BINS + 1)[1:-1], method="lower")
    return [float(v) for v in np.unique(qs.astype(np.float32))]


def baseline(X, scores, names):
    """The training baseline drift is measured against (the `fleet.baseline` metadata): for
    each feature and for the score, bin edges and each bin's share of the held-out rows."""

    def entry(values):
        edges = bin_edges(values)
        return {"edges": edges, "expected": binned(values, np.asarray(edges, dtype=np.float32))}

    return {
        "rows": int(len(X)),
        "features": [
            dict(name=n, **entry(X[:, i]), **({"seasonal": True} if spec.get("seasonal") else {}))
            for i, (n, spec) in enumerate(zip(names, feature_specs()))
        ],
        "score": entry(scores.astype(np.float32)),
    }


def export(model, names, version, base, training, card_metrics):
    onx = onnxmltools.convert_xgboost(
        model, initial_types=[("input", FloatTensorType([None, len(names)]))], target_opset=15
    )
    onx.graph.name = "late_risk"
    onx.doc_string = "P(delivered after the promise) for one delivery task; see MODEL_CARD.md"
    for key, value in (
        ("fleet.model_name", "late_risk"),
        ("fleet.model_version", version),
        ("fleet.features", ",".join(names)),
        ("fleet.baseline", json.dumps(base, separators=(",", ":"))),
        ("fleet.training", json.dumps(training, separators=(",", ":"))),
        ("fleet.metrics", json.dumps(card_metrics, separators=(",", ":"))),
    ):
        entry = onx.metadata_props.add()
        entry.key, entry.value = key, value
    return onx


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--features", required=True)
    ap.add_argument("--tasks", required=True)
    ap.add_argument("--version", default="1.0.0")
    ap.add_argument("--parity-rows", type=int, default=1000)
    args = ap.parse_args()

    names = feature_names()
    X, y, split, phase = load(args.features, args.tasks, names)
    train, test = split == "train", split == "test"
    model = xgb.XGBClassifier(**PARAMS)
    model.fit(X[train], y[train])
    p_test = model.predict_proba(X[test])[:, 1]

    report = {
        "version": args.version,
        "params": PARAMS,
        "features": names,
        "train_rows": int(train.sum()),
        "test": metrics(y[test], p_test),
        "test_by_phase": {
            str(int(ph)): metrics(y[test & (phase == ph)], model.predict_proba(X[test & (phase == ph)])[:, 1])
            for ph in (0, 1, 2, 3)
            if (test & (phase == ph)).sum() > 0 and len(set(y[test & (phase == ph)])) == 2
        },
        "importance_gain": {
            names[int(k[1:])] if k.startswith("f") and k[1:].isdigit() else k: round(v, 3)
            for k, v in sorted(model.get_booster().get_score(importance_type="gain").items(), key=lambda kv: -kv[1])
        },
    }

    base = baseline(X[test], p_test, names)
    report["baseline_rows"] = base["rows"]
    # What trained it and how it scored on held-out rows, for the fleet's model registry.
    training = {
        "data": "food-delivery/deliverytime.csv via simulate.py (seeded), features by edge-host features",
        "train_rows": report["train_rows"],
        "test_rows": int(test.sum()),
        "card": "models/late_risk/MODEL_CARD.md",
    }
    card_metrics = {k: round(v, 4) for k, v in report["test"].items() if isinstance(v, float)}
    onx = export(model, names, args.version, base, training, card_metrics)
    onnx.checker.check_model(onx)
    (HERE / "model.onnx").write_bytes(onx.SerializeToString())

    # Parity: held-out rows (NaNs included) with xgboost's own probabilities.
    rng = np.random.default_rng(7)
    idx = rng.choice(np.flatnonzero(test), size=min(args.parity_rows, int(test.sum())), replace=False)
    rows = X[idx]
    p_xgb = model.predict_proba(rows)[:, 1]
    sess = ort.InferenceSession(str(HERE / "model.onnx"), providers=["CPUExecutionProvider"])
    outputs = sess.run(None, {"input": rows})
    p_ort = outputs[1][:, 1] if outputs[1].ndim == 2 else np.array([o[1] for o in outputs[1]])
    report["parity_onnxruntime_max_abs_diff"] = float(np.max(np.abs(p_ort - p_xgb)))
    (HERE / "testdata").mkdir(exist_ok=True)
    with open(HERE / "testdata" / "parity.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names + ["p_xgboost"])
        for r, p in zip(rows, p_xgb):
            w.writerow(["" if math.isnan(v) else repr(float(v)) for v in r] + [repr(float(p))])

    (HERE / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["test"], indent=2))
    print("onnxruntime vs xgboost max |diff|:", report["parity_onnxruntime_max_abs_diff"])


if __name__ == "__main__":
    main()
