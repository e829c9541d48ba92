"""`path,label` CSV datasets, with paths relative to the table's own folder."""

from __future__ import annotations

import csv
from pathlib import Path

from loaderlab.data.manifest import DatasetError, Manifest, make_split, stratified_split

REQUIRED_COLUMNS = ("path", "label")


def read_table(
    table: str | Path, class_names: tuple[str, ...] | None = None
) -> tuple[list[str], list[int], tuple[str, ...]]:
    """Read a CSV of path,label rows; labels are class names."""
    table = Path(table).expanduser()
    if not table.is_file():
        raise DatasetError(f"CSV file '{table}' does not exist. Set data.csv to a table of path,label rows.")
    # utf-8-sig: spreadsheet programs save CSVs with a byte-order mark, which is not part of the header.
    with open(table, newline="", encoding="utf-8-sig") as f:
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
        paths.append(str(table.parent / path))
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
) -> Manifest:
    """Read a CSV dataset, split by seed or by a separate validation table."""
    paths, labels, names = read_table(csv, tuple(class_names) if class_names else None)
    if val_csv is None:
        return stratified_split(paths, labels, names, val_fraction, split_seed)
    val_paths, val_labels, _ = read_table(val_csv, names)
    return Manifest(make_split(paths, labels), make_split(val_paths, val_labels), names)
