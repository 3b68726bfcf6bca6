"""Reading the small text and JSON files of checkpoint and tokenizer folders,
with errors that name the file."""

import json


def read_text(file):
    """The UTF-8 text of `file`; ValueError naming it when it is not UTF-8."""
    try:
        with open(file, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{file} is not UTF-8 text: {exc}") from None


def read_json_object(file):
    """The JSON object (a dict) in `file`; ValueError naming it when the file
    is not UTF-8, not JSON, or holds something other than an object."""
    text = read_text(file)
    try:
        content = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or an integer of over 4300 digits
        raise ValueError(f"{file} is not valid JSON: {exc}") from None
    if not isinstance(content, dict):
        raise ValueError(f"{file} must hold a JSON object, got {json.dumps(content):.100}")
    return content
