"""Loading dataset records: a list of dicts, a JSON Lines file or a datasets.Dataset."""

import json
import os


def load_records(source, name="dataset"):
    """A list of dicts from `source`.

    Args:
        source: a list (or tuple) of dicts, a path to a .jsonl file (one JSON
            object a line, blank lines skipped), a folder holding one .jsonl
            file, or anything iterable of dicts (e.g. datasets.Dataset).
        name: how error messages call the source.
    """
    if isinstance(source, (str, os.PathLike)):
        return _read_jsonl(_jsonl_path(os.fspath(source), name), name)
    try:
        records = list(source)
    except TypeError:
        raise TypeError(f"{name} must be a list of dicts, a JSON Lines path or a "
                        f"datasets.Dataset, not {type(source).__name__}") from None
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise TypeError(f"{name}[{i}] must be a dict, not {type(record).__name__}")
    if not records:
        raise ValueError(f"{name} is empty")
    return records


def _jsonl_path(path, name):
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith(".jsonl"))
        if len(files) != 1:
            raise ValueError(f"{name} folder {path!r} must hold exactly one .jsonl file, "
                             f"found {files}")
        return os.path.join(path, files[0])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name} file {path!r} does not exist")
    return path


def _read_jsonl(path, name):
    records = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_number}: each line must be a JSON object")
            records.append(record)
    if not records:
        raise ValueError(f"{name} file {path!r} holds no records")
    return records


def require_field(record, field, index, name="dataset"):
    """record[field], or a KeyError naming the record index and the field. A
    field set to None (how datasets.Dataset fills a row that lacks a column)
    has no value either, and the message says so."""
    if record.get(field) is None:
        given = sorted(k for k, v in record.items() if v is not None)
        problem = "is None" if field in record else "is missing"
        raise KeyError(f"{name} record {index} lacks the field {field!r}: it {problem} "
                       f"(the fields with a value are {given})")
    return record[field]


def report_skipped(examples, skipped, n_records, name):
    """One warning counting the records skipped for each reason; an error when
    none is left. Returns the examples."""
    import warnings

    if skipped:
        detail = ", ".join(f"{n} ({reason})" for reason, n in skipped.items())
        warnings.warn(f"{name}: skipped {sum(skipped.values())} of {n_records} records: "
                      f"{detail}", stacklevel=3)
    if not examples:
        raise ValueError(f"{name}: every record was skipped ({skipped})")
    return examples
