"""Data sources: an ImageFolder tree, a CSV manifest, or a built-in set, as a list of items.

A source only lists what there is; nothing is decoded here. Files the user would not call
images (hidden files, other extensions, files outside class folders) are listed as ignored
with the reason, so nothing disappears silently. The user's files are only ever read.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path


from transferlab.data.items import Item, Source
from transferlab.errors import DataError

MAX_LABEL = 200  # characters of a class name (a manifest's label column)
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)
# DATA `builtin:NAME`, made by data/builtins.py; fashion-mnist:train is also accepted, but not listed
BUILTINS = ("digits", "fashion-mnist", "fashion-mnist:test")


def data_help() -> str:
    return ("give a folder of class subfolders, a CSV manifest (path,label) or builtin:NAME ("
            + ", ".join(f"builtin:{b}" for b in BUILTINS) + ")")


def check_spec(spec: str) -> str:
    """The kind of DATA `spec` (folder, csv, builtin), or a clear error; lists nothing."""
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in (*BUILTINS, "fashion-mnist:train"):
            raise DataError(f"unknown built-in data set '{name}': choose one of "
                            f"{', '.join('builtin:' + b for b in BUILTINS)}")
        return "builtin"
    path = Path(spec).expanduser()
    if path.is_dir():
        return "folder"
    if path.is_file() and path.suffix.lower() in {".csv", ".tsv"}:
        return "csv"
    if path.exists():
        raise DataError(f"data source {spec} is a file but not a CSV manifest: {data_help()}")
    raise DataError(f"data source {spec} does not exist: {data_help()}")


def open_source(spec: str, *, group_column: str | None = None, delimiter: str = ";") -> Source:
    """Resolve DATA (folder, CSV manifest or `builtin:NAME`) into a `Source`."""
    kind = check_spec(spec)
    if kind == "builtin":
        from transferlab.data.builtins import builtin_source

        return builtin_source(spec.removeprefix("builtin:"))
    path = Path(spec).expanduser()
    if kind == "folder":
        return folder_source(path)
    return manifest_source(path, group_column=group_column, delimiter=delimiter)


def ignore_reason(name: str) -> str | None:
    """Why a file name is not taken as an image, or None when it is one."""
    if name.startswith("."):
        return "hidden file"
    suffix = Path(name).suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        return f"not an image extension ({suffix or 'no extension'})"
    return None


def display_name(text: str) -> str:
    """`text` as it can be written anywhere (CSV, JSON, a terminal): the undecodable bytes of a
    non-UTF-8 file name become \\xNN escapes; valid names are unchanged."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


class FolderWalk:
    """The walk of a class-folder tree, by the symlink policy users expect:

    - DATA itself may be a link (the user named it); inside it, symlinked files and folders are
      followed when their target lies inside DATA, and each real file and folder is read once:
      a loop (`red/up -> ..`) or an alias of something already read is listed as ignored;
    - a link whose target is outside DATA (a class folder linked to `/`) is never followed;
    - broken links are skipped, with the reason.
    """

    def __init__(self, root: Path):
        self.listed = str(Path(root).absolute())  # paths are named relative to DATA as the user gave it
        self.root = os.path.realpath(root)
        self.seen_dirs: dict[str, str] = {self.root: "."}
        self.seen_files: dict[str, str] = {}
        self.ignored: list[dict[str, str]] = []
        self.skipped: list[dict[str, str]] = []

    def rel(self, path: str) -> str:
        return display_name(os.path.relpath(path, self.listed))

    def admit_dir(self, path: str) -> bool:
        """Whether to descend into the folder at `path` (a link to outside DATA or to a folder
        already read is listed as ignored)."""
        real = os.path.realpath(path)
        if not inside(real, self.root):
            self.ignored.append({"path": self.rel(path), "reason": "symlink to a folder outside DATA "
                                 f"({display_name(real)}): "
                                 "not followed; pass that folder as DATA or copy its images in"})
            return False
        if real in self.seen_dirs:
            self.ignored.append({"path": self.rel(path), "reason": "symlink to a folder already read "
                                 f"({self.seen_dirs[real]}): not followed (a loop or an alias)"})
            return False
        self.seen_dirs[real] = self.rel(path)
        return True

    def admit_file(self, path: str) -> bool:
        """Whether the file at `path` is read (once per real file, never outside DATA)."""
        real = os.path.realpath(path)
        if os.path.islink(path):
            if not os.path.exists(path):
                self.skipped.append({"path": self.rel(path), "reason": "broken symlink (its target does not exist)"})
                return False
            if not inside(real, self.root):
                self.ignored.append({"path": self.rel(path), "reason": f"symlink to a file outside DATA "
                                     f"({display_name(real)}): not followed; copy the file in or use a CSV manifest"})
                return False
        if real in self.seen_files:
            self.ignored.append({"path": self.rel(path), "reason": f"same file as {self.seen_files[real]} "
                                 "(a symlink): read once"})
            return False
        self.seen_files[real] = self.rel(path)
        return True

    def files(self, folder: str) -> list[str]:
        """Image candidates under `folder`, sorted, by the policy above."""
        found = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            kept = []
            for name in sorted(dirnames):
                if name.startswith(".") or name == "__MACOSX":
                    continue
                if self.admit_dir(os.path.join(dirpath, name)):
                    kept.append(name)
            dirnames[:] = kept
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                reason = ignore_reason(name)
                if reason:
                    self.ignored.append({"path": self.rel(full), "reason": reason})
                elif self.admit_file(full):
                    found.append(full)
        return found


def folder_source(root: Path) -> Source:
    """`root/<class>/<image>`; images may sit in subfolders of a class folder (see `FolderWalk`)."""
    walk = FolderWalk(root)
    items: list[Item] = []
    empty: list[str] = []
    warnings: list[str] = []
    try:
        entries = sorted(os.scandir(walk.listed), key=lambda e: e.name)
    except PermissionError:
        raise DataError(f"data folder {root} cannot be read (permission denied): check its permissions") from None
    for entry in entries:
        name = display_name(entry.name)
        if entry.name.startswith("."):
            if entry.is_file():
                walk.ignored.append({"path": name, "reason": "hidden file"})
            continue
        if not entry.is_dir():
            if entry.is_symlink() and not os.path.exists(entry.path):
                walk.skipped.append({"path": name, "reason": "broken symlink (its target does not exist)"})
            else:
                walk.ignored.append({"path": name, "reason": "not inside a class folder"})
            continue
        if not walk.admit_dir(entry.path):
            warnings.append(f"class folder '{name}' is not read: {walk.ignored[-1]['reason']}")
            continue
        found = walk.files(entry.path)
        items += [Item(path=walk.rel(full), label=name, file=Path(full)) for full in found]
        if not found:
            empty.append(name)
    warnings += [f"class folder '{c}' has no images: it is left out" for c in empty]
    if not items and not empty:
        warnings.append(f"{root} has no class subfolders: expected {root}/<class>/<image>")
    return Source(spec=display_name(walk.listed), kind="folder", items=items, ignored=walk.ignored,
                  skipped=walk.skipped, warnings=warnings, empty_classes=empty)


def manifest_source(csv_path: Path, *, group_column: str | None = None, delimiter: str = ";") -> Source:
    """A CSV with a header naming `path` and `label` columns (and optionally a group column). Multi-label:
    a `labels` column of names separated by `delimiter` (data.label_delimiter), or one 0/1 column per class
    (every column but path and group); an image with no label is a valid negative."""
    csv_path = csv_path.resolve()
    base = csv_path.parent
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"manifest {csv_path} is not UTF-8 text: save it as UTF-8 CSV") from None
    dialect = csv.excel_tab if csv_path.suffix.lower() == ".tsv" else csv.excel
    # the csv module reads a quoted field across lines itself (splitting the text first joined "c\n0" into c0)
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect=dialect)
    try:
        columns = {(name or "").strip().lower(): name for name in (reader.fieldnames or [])}
    except csv.Error as exc:
        raise DataError(f"manifest {csv_path} has an unreadable header: {exc}: fix its first line") from None
    if "path" not in columns:
        missing = "'path' column" if {"label", "labels"} & set(columns) else "'path' or 'label' column"
        raise DataError(
            f"manifest {csv_path} has no {missing} (found: {', '.join(columns) or 'nothing'}): its first row must "
            "be a header like path,label (multi-label: path,labels or path,<class>,<class>,...)")
    group_key = None
    if group_column is not None:
        if group_column.lower() not in columns:
            raise DataError(f"manifest {csv_path} has no group column '{group_column}' (data.group_column)")
        group_key = columns[group_column.lower()]
    elif "group" in columns:
        group_key = columns["group"]
    label_key = columns.get("label")
    labels_key = columns.get("labels") if label_key is None else None
    onehot = [] if label_key or labels_key else [name for key, name in columns.items()
                                                 if key != "path" and name != group_key and key]
    if not (label_key or labels_key or onehot):
        raise DataError(f"manifest {csv_path} has no 'label' column (found: {', '.join(columns) or 'nothing'}): its "
                        "first row must be a header like path,label (multi-label: path,labels or path,<class>,...)")
    items: list[Item] = []
    skipped: list[dict[str, str]] = []
    rows = iter(reader)
    while True:
        row_number = reader.line_num + 1  # the line the next row starts on (a quoted field may span lines)
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as exc:  # a field over the csv module's limit (131,072 characters), a stray quote
            raise DataError(f"manifest {csv_path} cannot be read near line {reader.line_num + 1}: {exc}: fix that row"
                            ) from None
        if None in row:  # DictReader's key for fields beyond the header's
            raise DataError(f"manifest {csv_path} line {row_number}: {len(reader.fieldnames) + len(row[None])} fields "
                            f"where the header names {len(reader.fieldnames)}: quote a field that holds a comma, "
                            "or fix the row")
        raw_path = (row.get(columns["path"]) or "").strip()
        names = None
        if label_key:
            label = (row.get(label_key) or "").strip()
        else:
            names = (multi_hot(row, onehot, csv_path, row_number) if onehot else
                     tuple(dict.fromkeys(n.strip() for n in (row.get(labels_key) or "").split(delimiter) if n.strip())))
            label = ";".join(names)
            if not raw_path and not label:
                continue
            for name in names:
                check_label(name, csv_path, row_number)
            if not raw_path:
                skipped.append({"path": f"row {row_number}", "reason": f"row {row_number}: empty path"})
                continue
        if names is None and not raw_path and not label:
            continue
        if names is None:
            check_label(label, csv_path, row_number)
        if names is None and (not raw_path or not label):
            skipped.append({"path": raw_path or f"row {row_number}",
                            "reason": f"row {row_number}: empty path or label"})
            continue
        file = Path(raw_path).expanduser()
        file = file if file.is_absolute() else base / file
        if not os.path.lexists(file):
            skipped.append({"path": raw_path, "reason": f"row {row_number}: file not found ({file})"})
            continue
        group = (row.get(group_key) or "").strip() or None if group_key else None
        items.append(Item(path=raw_path, label=label, file=file, group=group, labels=names))
    return Source(spec=str(csv_path), kind="csv", items=items, skipped=skipped, label_columns=onehot or None,
                  multilabel=label_key is None)


def check_label(label: str, csv_path: Path, row_number: int) -> None:
    """A class name fit for every file it is written to, or a DataError naming the row."""
    if len(label) > MAX_LABEL:
        raise DataError(f"manifest {csv_path} row {row_number}: a label of {len(label):,} characters (at most "
                        f"{MAX_LABEL}): the label column must hold class names")
    if any(not character.isprintable() for character in label):
        raise DataError(f"manifest {csv_path} line {row_number}: the label {label!r} holds a line break or another "
                        "control character: a label is a class name on one line; fix that row")


def multi_hot(row: dict, columns: list[str], csv_path: Path, row_number: int) -> tuple[str, ...]:
    """The classes whose 0/1 column is 1 in `row` (an empty cell is 0); any other value is a DataError."""
    names = []
    for column in columns:
        value = (row.get(column) or "").strip()
        if value in ("1", "1.0", "true", "True"):
            names.append(column.strip())
        elif value not in ("", "0", "0.0", "false", "False"):
            raise DataError(f"manifest {csv_path} line {row_number}: column {column!r} holds {value!r}: a manifest "
                            "of one column per class takes 0 or 1 in each (or name the labels in a labels column)")
    return tuple(names)
