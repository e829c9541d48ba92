"""`path,label` CSV datasets, with paths relative to the table's own folder."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from loaderlab.data.manifest import DatasetError, Manifest, assemble
from loaderlab.data.storage import Storage, beside, is_url

REQUIRED_COLUMNS = ("path", "label")


def read_table(
    table: str | Path, class_names: tuple[str, ...] | None = None, storage: Storage | None = None
) -> tuple[list[str], list[int], tuple[str, ...]]:
    """Read a CSV of path,label rows (a file or any fsspec URL); labels are class names."""
    if is_url(str(table)):
        url = str(table)
        text = (storage or Storage()).read_text(url)
        # Relative paths resolve against the table's own URL, as they do against its folder locally.
        return _parse_table(url, text, class_names, lambda p: beside(url, p))
    table = Path(table).expanduser()
    if not table.is_file():
        raise DatasetError(f"CSV file '{table}' does not exist. Set data.csv to a table of path,label rows.")
    # utf-8-sig: spreadsheet programs save CSVs with a byte-order mark, which is not part of the header.
    text = table.read_text(encoding="utf-8-sig")
    return _parse_table(str(table), text, class_names, lambda p: str(table.parent / p))


def _parse_table(
    table: str, text: str, class_names: tuple[str, ...] | None, resolve
) -> tuple[list[str], list[int], tuple[str, ...]]:
    """Rows of a CSV's text as paths (through `resolve`), label indices and class names."""
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        header = tuple(reader.fieldnames or ())
        if not set(REQUIRED_COLUMNS) <= set(header):
            raise DatasetError(
                f"CSV file '{table}' has the header {list(header)}; it needs the columns "
                f"{list(REQUIRED_COLUMNS)}, e.g. a first line 'path,label'."
            )
        rows = [(r["path"].strip(), r["label"].strip()) for r in reader]
    if not rows:
        raise DatasetError(f"CSV file '{table}' has no rows.")
    known = tuple(class_names) if class_names else tuple(sorted({label for _, label in rows}))
    index = {name: i for i, name in enumerate(known)}
    paths, labels = [], []
    for line, (path, label) in enumerate(rows, start=2):
        if label not in index:
            raise DatasetError(
                f"{table}:{line}: label '{label}' is not one of the classes {list(known)}. "
                "Fix the row or add the class to data.class_names."
            )
        paths.append(resolve(path))
        labels.append(index[label])
    missing = [name for name in known if name not in {rows_label for _, rows_label in rows}]
    if missing:
        raise DatasetError(f"CSV file '{table}' has no rows for the classes {missing}.")
    return paths, labels, known


def csv_manifest(
    csv: str,
    val_csv: str | None = None,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    class_names: list[str] | None = None,
    storage_options: dict | None = None,
    test_csv: str | None = None,
    test_fraction: float = 0.0,
) -> Manifest:
    """Read a CSV dataset (a file or any fsspec URL), split by seed or by separate tables."""
    storage = Storage(dict(storage_options or {}))
    paths, labels, names = read_table(csv, tuple(class_names) if class_names else None, storage)
    val = read_table(val_csv, names, storage)[:2] if val_csv is not None else None
    test = read_table(test_csv, names, storage)[:2] if test_csv is not None else None
    return assemble(
        (paths, labels),
        names,
        val,
        test,
        (val_fraction, test_fraction, split_seed),
        ("data.csv", "data.val_csv", "data.test_csv"),
    )
