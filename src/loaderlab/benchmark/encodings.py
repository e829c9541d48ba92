"""How a pack could store its images: size, one-core decode speed and fidelity of each encoding.

python -m loaderlab.benchmark.encodings --root /data/photos --input-size 224

Each encoding stores the spec path's pixels (the source decoded and resized as every loader does)
at a stored size and JPEG quality and chroma subsampling; reading it back decodes and resizes to
the input. PSNR is against the spec path's own pixels at the input size.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import cv2
import numpy as np

from loaderlab.data.folder import scan_class_folders
from loaderlab.data.pack_encode import SAMPLING
from loaderlab.loaders.decode import ImageSpec, decode_bytes, decode_resize

# (stored px, quality, subsampling)
ENCODINGS = [(0, 95, "420"), (0, 90, "420"), (0, 90, "444"), (0, 95, "444"), (32, 90, "444")]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 arrays, in dB."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def measure(paths: Sequence[str], input_size: int, seconds: float = 3.0) -> list[dict]:
    """One row per encoding: stored size, KB, decode + resize images/s on one core, PSNR."""
    cv2.setNumThreads(1)
    spec = ImageSpec(input_size, input_size)
    reference = [decode_resize(p, spec) for p in paths]  # also warms the page cache
    source = _rate(lambda: [decode_resize(p, spec) for p in paths], len(paths), seconds)
    rows = [{"stored": "source (the spec path)", "kb": None, "rate": source}]
    for margin, quality, subsampling in ENCODINGS:
        stored = ImageSpec(input_size + margin, input_size + margin)
        params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, SAMPLING[subsampling]]
        encoded = [
            cv2.imencode(".jpg", cv2.cvtColor(decode_resize(p, stored), cv2.COLOR_RGB2BGR), params)[
                1
            ].tobytes()
            for p in paths
        ]
        rate = _rate(lambda encoded=encoded: [decode_bytes(d, spec) for d in encoded], len(encoded), seconds)
        decoded = np.stack([decode_bytes(d, spec) for d in encoded])
        rows.append(
            {
                "stored": f"{stored.height}x{stored.width} q{quality} {subsampling}",
                "kb": np.mean([len(d) for d in encoded]) / 1024,
                "rate": rate,
                "psnr": psnr(decoded, np.stack(reference)),
            }
        )
    return rows


def _rate(one_pass, images: int, seconds: float) -> float:
    """Images/s of repeated passes over at least `seconds`."""
    count, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < seconds:
        one_pass()
        count += images
    return count / (time.perf_counter() - begin)


def main(argv: Sequence[str] | None = None) -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", required=True, help="class folders of images, only read")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--count", type=int, default=12, help="images sampled from the folder")
    args = parser.parse_args(argv)
    paths, _, _ = scan_class_folders(args.root)
    step = max(1, len(paths) // args.count)
    rows = measure(paths[::step][: args.count], args.input_size)
    print("| stored as | KB per image | decode + resize, img/s, one core | PSNR against the spec path |")
    print("|---|---:|---:|---:|")
    for row in rows:
        kb = f"{row['kb']:.0f}" if row["kb"] is not None else "-"
        db = f"{row['psnr']:.1f} dB" if "psnr" in row else "-"
        print(f"| {row['stored']} | {kb} | {row['rate']:,.0f} | {db} |")


if __name__ == "__main__":
    main()
