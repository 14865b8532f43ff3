"""onnxruntime on the held-out parity rows: the reference the host's scoring is compared with.

Prints microseconds per row for single-row calls and batches of 64 (best of 5 runs of 1,000
rows each), the same rows and batch sizes as `cargo bench -p fleet-host --bench inference`.
"""

import csv
import math
import pathlib
import time

import numpy as np
import onnxruntime as ort

HERE = pathlib.Path(__file__).resolve().parent


def rows():
    with open(HERE / "testdata" / "parity.csv", newline="") as f:
        r = csv.reader(f)
        next(r)
        return np.asarray([[float(v) if v else math.nan for v in row[:-1]] for row in r], dtype=np.float32)


def per_row_us(sess, x, batch):
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        for i in range(0, len(x) - batch + 1, batch):
            sess.run(["probabilities"], {"input": x[i : i + batch]})
        best = min(best, (time.perf_counter() - start) / (len(x) // batch * batch))
    return best * 1e6


def main():
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(HERE / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    x = rows()
    for batch in (1, 64):
        print(f"onnxruntime {ort.__version__} batch {batch}: {per_row_us(sess, x, batch):.2f} us/row")


if __name__ == "__main__":
    main()
