"""What model.fit's data path costs an input, against a plain loop over the same input.

python -m loaderlab.benchmark.fit_path --root outputs/datasets/synthetic-n2000-px256-c4-s0 --rounds 5

The benchmark times every entry as fit pulls batches (Keras' TFEpochIterator, a tf.function per
step). A plain `for images, labels in dataset` skips that: this prints both for the Keras peer and
for loader=tfdata, each pass in turn in one process, so that the machine's drift cancels.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from statistics import median
from typing import Any


def plain_loop(dataset: Any) -> Callable[[], int]:
    """One pass as `for images, labels in dataset`, each batch's pixels read once."""

    def run_pass() -> int:
        count = 0
        for images, _labels in dataset:
            count += int(images.shape[0])
            images.numpy().max()
        return count

    return run_pass


def inputs(root: str, input_size: int, batch_size: int) -> dict[str, Any]:
    """The Keras peer's dataset and loader=tfdata's, over the same folder at the same size."""
    import keras

    from loaderlab.benchmark.measure import SEED
    from loaderlab.data.folder import scan_class_folders
    from loaderlab.data.manifest import make_split
    from loaderlab.loaders.decode import ImageDecoder, ImageSpec
    from loaderlab.loaders.tfdata import TFDataLoader

    peer = keras.utils.image_dataset_from_directory(
        root, batch_size=batch_size, image_size=(input_size, input_size), shuffle=False, verbose=False
    )
    paths, labels, _ = scan_class_folders(root)
    decoder = ImageDecoder(ImageSpec(input_size, input_size))
    feed = TFDataLoader().feed(make_split(paths, labels), decoder, batch_size, training=True, seed=SEED)
    return {"keras_image_dataset_from_directory": peer, "tfdata": feed.x}


def main(argv: Sequence[str] | None = None) -> None:
    """Time both paths for both inputs, interleaved; print medians and the plain loop's lead."""
    from loaderlab.benchmark.measure import _fit_pass_runner

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    runners = {}
    for name, dataset in inputs(args.root, args.input_size, args.batch_size).items():
        runners[f"{name}, fit's path"] = _fit_pass_runner({"x": dataset})[0]
        runners[f"{name}, plain loop"] = plain_loop(dataset)
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for run_pass in runners.values():
        run_pass()  # warm-up: tracing and thread pools
    for _ in range(args.rounds):
        for name, run_pass in runners.items():
            start = time.perf_counter()
            count = run_pass()
            rates[name].append(count / (time.perf_counter() - start))
    for name, values in rates.items():
        print(f"{name:<55} {median(values):>7.0f} images/s  ({min(values):.0f}-{max(values):.0f})")


if __name__ == "__main__":
    main()
