"""Train under MultiWorkerMirroredStrategy with two local worker processes; compare with one device.

    python multiworker_check.py OUT_DIR            # launches both workers and the one-device run, prints RESULT
    python multiworker_check.py OUT_DIR worker I PORT0 PORT1   # one worker (started by the line above)
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def data():
    import numpy as np

    rng = np.random.default_rng(0)
    source_x = rng.normal(size=(256, 2)).astype("float32")
    source_y = (source_x[:, 0] + 0.3 * source_x[:, 1] > 0).astype("int64")
    target_x = (source_x @ np.array([[0.8, 0.6], [-0.6, 0.8]]) + 0.5).astype("float32")
    return source_x, source_y, target_x


def train(out, name):
    import keras
    import numpy as np

    import domadapt as da

    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([keras.Input((2,)), keras.layers.Dense(16, activation="tanh"),
                                 keras.layers.Dense(16, activation="tanh")])
    adapter = da.DomainAdapter(backbone, num_classes=2, strategies=[
        da.GradientReversal(hidden_units=(16,), dropout=0.0), da.MMD(), da.CORAL(), da.EntropyMinimization(0.1)])
    adapter.compile(optimizer=keras.optimizers.Adam(1e-2))
    source_x, source_y, target_x = data()
    history = adapter.fit(source=(source_x, source_y), target=target_x, epochs=2, batch_size=32, seed=0, verbose=0)
    np.savez(out / f"{name}.npz", *[np.asarray(v) for v in adapter.trainable_variables])
    (out / f"{name}.json").write_text(json.dumps({k: [float(x) for x in v] for k, v in history.history.items()}))


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def main():
    out = Path(sys.argv[1])
    if len(sys.argv) > 2 and sys.argv[2] == "worker":
        index, ports = int(sys.argv[3]), sys.argv[4:6]
        os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                                              "task": {"type": "worker", "index": index}})
        import tensorflow as tf

        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        with strategy.scope():
            train(out, f"worker{index}")
        return
    if len(sys.argv) > 2 and sys.argv[2] == "single":
        train(out, "single")
        return
    ports = [str(free_port()), str(free_port())]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    workers = [subprocess.Popen([sys.executable, __file__, str(out), "worker", str(i), *ports], env=env)
               for i in range(2)]
    single = subprocess.run([sys.executable, __file__, str(out), "single"], env=env, timeout=300)
    codes = [w.wait(timeout=300) for w in workers]
    import numpy as np

    result = {"codes": codes + [single.returncode]}
    if not any(result["codes"]):
        single_weights, worker0, worker1 = (np.load(out / f"{n}.npz") for n in ("single", "worker0", "worker1"))
        moved = max(float(np.abs(single_weights[k]).max()) for k in single_weights)
        result["gap_to_single"] = max(float(np.abs(single_weights[k] - worker0[k]).max()) for k in single_weights)
        result["gap_between_workers"] = max(float(np.abs(worker0[k] - worker1[k]).max()) for k in worker0)
        result["scale"] = moved
        result["loss"] = [json.loads((out / f"{n}.json").read_text())["loss"][-1] for n in ("single", "worker0")]
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
