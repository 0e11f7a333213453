"""Train/validation splits: one seeded hold-out split, or k-fold cross-validation saved to a JSON file.

The folds depend only on the sorted case ids, ``n_folds`` and the seed, so every fold's run (on any machine)
sees the same partition. A splits file (``data.splits_file``, nnU-Net's ``splits_final.json`` idea) can pin
them: when it exists it is read and checked against the dataset, otherwise it is written.
"""

from __future__ import annotations

import random
from pathlib import Path

from medpipe.datasets.layouts import Case, read_json
from medpipe.errors import ConfigError, DatasetError
from medpipe.io.atomic import write_json_atomic

Splits = list[dict[str, list[str]]]


def _labelled(cases: tuple[Case, ...] | list[Case]) -> list[Case]:
    return sorted((c for c in cases if c.label is not None), key=lambda c: c.case_id)


def split_cases(
    cases: tuple[Case, ...] | list[Case], val_fraction: float, seed: int
) -> tuple[list[Case], list[Case]]:
    """A seeded train/validation split of the labelled cases (at least one case on each side)."""
    labelled = _labelled(cases)
    if len(labelled) < 2:
        raise DatasetError(f"need at least 2 labelled cases to train and validate, found {len(labelled)}")
    order = list(labelled)
    random.Random(seed).shuffle(order)
    n_val = min(max(1, round(len(order) * val_fraction)), len(order) - 1)
    val = sorted(order[:n_val], key=lambda c: c.case_id)
    train = sorted(order[n_val:], key=lambda c: c.case_id)
    return train, val


def kfold_splits(case_ids: list[str], n_folds: int, seed: int) -> Splits:
    """``n_folds`` folds of ``case_ids``: fold k validates on every n-th case of a seeded shuffle."""
    ids = sorted(set(case_ids))
    if len(ids) < n_folds:
        raise DatasetError(f"{n_folds}-fold cross-validation needs at least {n_folds} labelled cases, "
                           f"found {len(ids)}", hint="lower data.n_folds or use a hold-out split (fold -1)")
    order = list(ids)
    random.Random(seed).shuffle(order)
    folds = []
    for k in range(n_folds):
        val = sorted(order[k::n_folds])
        folds.append({"train": sorted(set(ids) - set(val)), "val": val})
    return folds


def _check_splits(splits: object, ids: set[str], n_folds: int, path: Path) -> Splits:
    if not isinstance(splits, list) or not all(
        isinstance(s, dict) and isinstance(s.get("train"), list) and isinstance(s.get("val"), list) for s in splits
    ):
        raise DatasetError("expected a list of {\"train\": [...], \"val\": [...]} folds", path=path)
    if len(splits) != n_folds:
        raise DatasetError(f"the splits file holds {len(splits)} folds, the config asks for {n_folds}", path=path,
                           hint="set data.n_folds to match, or delete the file to make new folds")
    listed = {c for s in splits for c in (*s["train"], *s["val"])}
    unknown = sorted(listed - ids)
    if unknown:
        raise DatasetError(f"the splits name cases that are not in the dataset: {unknown[:10]}", path=path)
    vals = [c for s in splits for c in s["val"]]
    twice = sorted({c for c in vals if vals.count(c) > 1})
    if twice:
        raise DatasetError(f"cases validated in more than one fold: {twice[:10]}", path=path)
    return [{"train": [str(c) for c in s["train"]], "val": [str(c) for c in s["val"]]} for s in splits]


def fold_splits(cases: tuple[Case, ...] | list[Case], n_folds: int, seed: int,
                splits_file: str | Path | None = None) -> Splits:
    """The k folds of the labelled cases: read from ``splits_file`` when it exists, else made (and written
    there when a path is given)."""
    ids = {c.case_id for c in _labelled(cases)}
    if splits_file:
        path = Path(splits_file)
        if path.is_file():
            raw: object = read_json(path).get("folds")
            return _check_splits(raw, ids, n_folds, path)
        splits = kfold_splits(sorted(ids), n_folds, seed)
        write_json_atomic(path, {"n_folds": n_folds, "seed": seed, "folds": splits})
        return splits
    return kfold_splits(sorted(ids), n_folds, seed)


def select_split(cases: tuple[Case, ...] | list[Case], *, fold: int, n_folds: int, val_fraction: float, seed: int,
                 splits_file: str | Path | None = None) -> tuple[list[Case], list[Case], Splits | None]:
    """(train, val, all folds or None): fold ``k`` of ``n_folds``, or a hold-out split when ``fold`` is -1."""
    if fold == -1:
        train, val = split_cases(cases, val_fraction, seed)
        return train, val, None
    if not 0 <= fold < n_folds:
        raise ConfigError(f"fold {fold} does not exist: {n_folds} folds are numbered 0-{n_folds - 1}",
                          hint="pass --fold between 0 and n_folds - 1 (or -1 for a hold-out split)")
    splits = fold_splits(cases, n_folds, seed, splits_file)
    by_id = {c.case_id: c for c in cases}
    chosen = splits[fold]
    return [by_id[c] for c in chosen["train"]], [by_id[c] for c in chosen["val"]], splits
