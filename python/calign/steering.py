"""Control vectors: steer a model with a direction per decoder block, learned
from contrastive prompts, added to the residual stream at every position
(representation engineering, Zou et al. 2023; repeng's recipe and file
format, T. Vogel 2024).

    pairs = persona_pairs("Act as if you're extremely {persona}.",
                          ["happy"], ["sad"], suffixes, user_tag="[INST]", asst_tag="[/INST]")
    happy = ControlVector.train(model, tokenizer, pairs)
    with steered(model, happy, 1.5):
        model.generate(...)
    happy.export_gguf("happy.gguf")      # llama.cpp's --control-vector reads it

A block's hidden state is the residual stream after it (calign.Model.
layer_hidden_states), read at each prompt's last token; its direction is the
first principal component of the positive-minus-negative differences
("pca_diff", repeng's default), of the states centred on each pair's mean
("pca_center"), or the normalised mean difference ("mean_diff", llama.cpp's
--method mean), signed so that positive prompts project higher. Directions
have unit norm; the strength scales them when applied."""

import contextlib
import os

import numpy as np

from calign import checks

METHODS = ("pca_diff", "pca_center", "mean_diff")


def persona_pairs(template, positive_personas, negative_personas, suffixes, user_tag="",
                  asst_tag=""):
    """repeng's contrastive prompts: for each suffix and each (positive,
    negative) persona pair, f"{user_tag} {template(persona)} {asst_tag} {suffix}"
    for both personas (the tags and suffix joined by single spaces, empty parts
    left out). Returns [(positive text, negative text)]."""
    checks.text("template", template)
    checks.require("{persona}" in template, "template", template,
                   "a text with a {persona} placeholder")
    for name, values in (("positive_personas", positive_personas),
                         ("negative_personas", negative_personas), ("suffixes", suffixes)):
        checks.require(isinstance(values, (list, tuple)) and len(values) > 0 and
                       all(isinstance(v, str) for v in values), name, values,
                       "a non-empty list of strings")
    checks.require(len(positive_personas) == len(negative_personas), "negative_personas",
                   negative_personas, f"one persona per positive one ({len(positive_personas)})")

    def prompt(persona, suffix):
        parts = [user_tag, template.format(persona=persona), asst_tag, suffix]
        return " ".join(p for p in parts if p)

    return [(prompt(pos, suffix), prompt(neg, suffix)) for suffix in suffixes
            for pos, neg in zip(positive_personas, negative_personas)]


def _pair_texts(pairs):
    checks.require(isinstance(pairs, (list, tuple)) and len(pairs) > 0, "pairs", pairs,
                   "a non-empty list of (positive, negative) prompts")
    texts = []
    for i, pair in enumerate(pairs):
        if isinstance(pair, dict):
            missing = [k for k in ("positive", "negative") if k not in pair]
            checks.require(not missing, f"pairs[{i}]", pair, "a dict with 'positive' and "
                           "'negative'")
            pair = (pair["positive"], pair["negative"])
        checks.require(isinstance(pair, (list, tuple)) and len(pair) == 2 and
                       all(isinstance(t, str) and t for t in pair), f"pairs[{i}]", pair,
                       "a (positive, negative) pair of non-empty texts")
        texts.extend(pair)
    return texts


def last_token_states(model, token_lists, layers, batch_size=32):
    """[len(layers), N, d] float64: each block's residual stream at the last
    token of each sequence."""
    out = np.empty((len(layers), len(token_lists), model.hidden_size), np.float64)
    for start in range(0, len(token_lists), batch_size):
        rows = token_lists[start:start + batch_size]
        width = max(len(r) for r in rows)
        ids = np.zeros((len(rows), width), np.int64)
        mask = np.zeros((len(rows), width), bool)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = r, True
        states = model.layer_hidden_states(ids, layers, attention_mask=mask)
        last = mask.sum(axis=1) - 1
        out[:, start:start + len(rows)] = states[:, np.arange(len(rows)), last]
    return out


def _first_component(matrix):
    """The unit first principal axis of the rows (centred on their mean, as
    sklearn's PCA does before its SVD)."""
    centred = matrix - matrix.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return vt[0]


def direction_of(positive, negative, method):
    """A unit direction from [n, d] states of the positive and negative prompts,
    signed so positives project higher for most pairs (repeng's rule)."""
    if method == "pca_diff":
        direction = _first_component(positive - negative)
    elif method == "pca_center":
        centre = (positive + negative) / 2
        direction = _first_component(np.concatenate([positive - centre, negative - centre]))
    else:
        direction = (positive - negative).mean(axis=0)
        norm = np.linalg.norm(direction)
        if norm == 0:
            raise ValueError("the positive and negative prompts give the same states: no "
                             "mean difference to steer along")
        direction = direction / norm
    higher = np.mean(positive @ direction > negative @ direction)
    lower = np.mean(positive @ direction < negative @ direction)
    return -direction if lower > higher else direction


class ControlVector:
    """Unit directions per decoder block {block index: float32 [hidden_size]}
    of a model type; vectors add, subtract, negate and scale as repeng's."""

    def __init__(self, model_type, directions):
        checks.text("model_type", model_type)
        checks.require(isinstance(directions, dict) and len(directions) > 0, "directions",
                       directions, "a non-empty {block index: vector} dict")
        widths = set()
        self.directions = {}
        for layer, vector in directions.items():
            checks.require(checks.is_int(layer) and layer >= 0, "directions", layer,
                           "keyed by non-negative block indices")
            v = np.asarray(vector)
            checks.require(v.ndim == 1 and v.dtype.kind in "fiu" and
                           bool(np.all(np.isfinite(v))), f"directions[{layer}]", v.shape,
                           "a finite 1-D vector")
            widths.add(v.size)
            self.directions[int(layer)] = v.astype(np.float32)
        checks.require(len(widths) == 1, "directions", sorted(widths),
                       "vectors of one width (the model's hidden size)")
        self.model_type = model_type

    @classmethod
    def train(cls, model, tokenizer, pairs, layers=None, method="pca_diff", batch_size=32):
        """Directions from contrastive (positive, negative) prompts (texts, or
        dicts with those keys, e.g. from persona_pairs), as repeng's
        read_representations: each prompt's last-token state after each block
        of `layers` (default: every block but the first, repeng's
        range(-1, -n_layers, -1)), one direction per block by `method`."""
        checks.choice("method", method, METHODS)
        batch_size = checks.integer("batch_size", batch_size, 1)
        if layers is None:
            checks.require(model.num_layers > 1, "layers", None,
                           "given for a model of one block (the default leaves block 0 out)")
            layers = range(-1, -model.num_layers, -1)
        blocks = sorted(set(model.block_indices(layers)))
        texts = _pair_texts(pairs)
        token_lists = [tokenizer.encode(t) for t in texts]
        for text, ids in zip(texts, token_lists):
            checks.require(len(ids) > 0, "pairs", text, "texts that encode to tokens")
        states = last_token_states(model, token_lists, blocks, batch_size)
        directions = {layer: direction_of(states[i, 0::2], states[i, 1::2], method)
                      for i, layer in enumerate(blocks)}
        return cls(model.config["model_type"], directions)

    # ---- applying ------------------------------------------------------------------

    def rows(self, model, strength=1.0):
        """[n_layer, hidden_size] rows for Model.set_control: strength times
        each block's direction, 0 for the blocks without one."""
        strength = checks.real("strength", strength)
        width = next(iter(self.directions.values())).size
        checks.require(width == model.hidden_size, "control vector", width,
                       f"vectors of the model's hidden size ({model.hidden_size})")
        out_of_range = [l for l in self.directions if l >= model.num_layers]
        checks.require(not out_of_range, "control vector", out_of_range,
                       f"blocks within the model's {model.num_layers}")
        rows = np.zeros((model.num_layers, width), np.float32)
        for layer, vector in self.directions.items():
            rows[layer] = strength * vector.astype(np.float64)
        return rows

    # ---- arithmetic (repeng's) -----------------------------------------------------

    def _combine(self, other, sign):
        checks.require(isinstance(other, ControlVector) and other.model_type == self.model_type,
                       "other", other, f"a ControlVector of a {self.model_type!r} model")
        layers = set(self.directions) | set(other.directions)
        width = next(iter(self.directions.values())).size
        zero = np.zeros(width, np.float32)
        return ControlVector(self.model_type, {
            l: self.directions.get(l, zero) + sign * other.directions.get(l, zero)
            for l in sorted(layers)})

    def __add__(self, other):
        return self._combine(other, 1.0)

    def __sub__(self, other):
        return self._combine(other, -1.0)

    def __mul__(self, factor):
        factor = checks.real("factor", factor)
        return ControlVector(self.model_type, {l: factor * v for l, v in
                                               self.directions.items()})

    __rmul__ = __mul__

    def __truediv__(self, divisor):
        divisor = checks.real("divisor", divisor)
        checks.require(divisor != 0, "divisor", divisor, "non-zero")
        return self * (1.0 / divisor)

    def __neg__(self):
        return self * -1.0

    # ---- files ---------------------------------------------------------------------

    def save(self, path):
        """An .npz of the directions (direction.N arrays) and the model type."""
        arrays = {f"direction.{l}": v for l, v in self.directions.items()}
        np.savez(path, model_type=np.array(self.model_type), **arrays)

    @classmethod
    def load(cls, path):
        try:
            with np.load(path, allow_pickle=False) as data:
                model_type = str(data["model_type"])
                directions = {_layer_of(name, path): data[name] for name in data.files
                              if name != "model_type"}
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"{path!r} is not a control vector file saved by "
                             f"ControlVector.save: {exc}") from None
        return cls(model_type, directions)

    def export_gguf(self, path):
        """repeng's GGUF layout, which llama.cpp's --control-vector reads:
        architecture "controlvector", controlvector.model_hint = the model
        type, controlvector.layer_count, one float32 tensor direction.N per
        block N (llama.cpp ignores block 0)."""
        gguf = _gguf()
        writer = gguf.GGUFWriter(os.fspath(path), "controlvector")
        writer.add_string("controlvector.model_hint", self.model_type)
        writer.add_uint32("controlvector.layer_count", len(self.directions))
        for layer, vector in sorted(self.directions.items()):
            writer.add_tensor(f"direction.{layer}", vector)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    @classmethod
    def import_gguf(cls, path):
        gguf = _gguf()
        try:
            reader = gguf.GGUFReader(os.fspath(path))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read GGUF file {path!r}: {exc}") from None
        hint = reader.fields.get("controlvector.model_hint")
        model_type = (bytes(hint.parts[hint.data[0]]).decode("utf-8") if hint is not None
                      else "unknown")
        directions = {}
        for tensor in reader.tensors:
            if tensor.name.startswith("direction."):
                directions[_layer_of(tensor.name, path)] = np.array(tensor.data, np.float32)
        checks.require(len(directions) > 0, "path", os.fspath(path),
                       "a GGUF file with direction.N tensors")
        return cls(model_type, directions)


def _layer_of(name, path):
    _, _, number = name.partition(".")
    if not name.startswith("direction.") or not number.isdigit():
        raise ValueError(f"{path!r} holds {name!r}; a control vector file holds direction.N "
                         "tensors")
    return int(number)


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ImportError("GGUF files need the gguf package: pip install gguf") from None
    return gguf


@contextlib.contextmanager
def steered(model, vector, strength=1.0):
    """The model runs with strength x vector added after its blocks inside the
    block (every forward: generation, scoring, training), unsteered after.
    Strength 0 leaves the model exactly as it is."""
    strength = checks.real("strength", strength)
    rows = vector.rows(model, strength)
    model.set_control(rows if strength != 0 else None)
    try:
        yield model
    finally:
        model.set_control(None)
