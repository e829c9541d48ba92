"""What trainer.mixed_precision and trainer.jit_compile do to a model's training speed on this device,
with no input pipeline: in-memory uint8 batches, each setting in a fresh process, interleaved rounds.

python -m loaderlab.benchmark.train_step --model small_cnn --input-size 64 --rounds 3
python -m loaderlab.benchmark.train_step --model resnet50 --input-size 64 --batch 32
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

SETTINGS = [("false", "false"), ("false", "true"), ("true", "false"), ("true", "true")]  # (mixed, jit)
RESULT = "TRAIN_STEP "


def measure(model: str, input_size: int, batch: int, steps: int, mixed: str, jit: str) -> float:
    """Images per second over `steps` training steps after a warm-up, in this process."""
    import numpy as np
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from loaderlab.training.precision import dtype_policy, dtype_policy_for, jit_compile_for, visible_gpu
    from loaderlab.utils.paths import PROJECT_ROOT

    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={model}"])
    shape = (input_size, input_size, 3)
    with dtype_policy(dtype_policy_for(mixed == "true", visible_gpu())):
        net = instantiate(cfg.model.build, input_shape=shape, num_classes=4)
        net.compile(
            optimizer="adam",
            loss="sparse_categorical_crossentropy",
            jit_compile=jit_compile_for(jit == "true"),
        )
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch * 4, *shape), dtype=np.uint8)
    y = rng.integers(0, 4, batch * 4)
    net.fit(x, y, batch_size=batch, epochs=1, verbose=0)  # tracing and compilation
    epochs = max(1, steps // 4)
    start = time.perf_counter()
    net.fit(x, y, batch_size=batch, epochs=epochs, verbose=0)
    return epochs * len(x) / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> None:
    """Every setting once per round, each in a fresh process; the median and range of each."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("MIXED", "JIT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        rate = measure(args.model, args.input_size, args.batch, args.steps, *args.child)
        print(RESULT + json.dumps(rate), flush=True)
        return
    rates: dict[tuple[str, str], list[float]] = {s: [] for s in SETTINGS}
    for _ in range(args.rounds):
        for mixed, jit in SETTINGS:
            command = [
                sys.executable,
                "-m",
                "loaderlab.benchmark.train_step",
                *sys.argv[1:],
                "--child",
                mixed,
                jit,
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            line = [x for x in done.stdout.splitlines() if x.startswith(RESULT)]
            if not line:
                print(f"mixed_precision={mixed} jit_compile={jit}: failed\n{done.stderr[-2000:]}")
                continue
            rates[(mixed, jit)].append(json.loads(line[-1].removeprefix(RESULT)))
    base = statistics.median(rates[SETTINGS[0]]) if rates[SETTINGS[0]] else float("nan")
    print(
        f"{args.model} at {args.input_size} px, batch {args.batch}, {args.rounds} rounds "
        "(img/s: median, range, ratio to float32 without XLA)"
    )
    for (mixed, jit), found in rates.items():
        if found:
            median = statistics.median(found)
            print(f"  mixed_precision={mixed:5} jit_compile={jit:5} {median:8.1f}  "
                  f"({min(found):.1f}-{max(found):.1f})  x{median / base:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
