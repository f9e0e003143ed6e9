"""A TFDS source read into memory as `Example`s, so that rationale filters and several rationales per example
apply to TFDS tasks as to files (`register.register_tfds_task` with `rationale_filters`/`rationale_sampling`)."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from sbs_jax.data.records.data_dir import DataError, Example, Rationale

_KNOWN = {"input_field", "label_field", "rationale_field", "teacher_label_field", "label_names", "metric",
          "variants", "prefix_style"}


def _text(value, label_names=None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8").strip()
    if label_names is not None and isinstance(value, (int, np.integer)):
        return str(label_names[int(value)])
    return str(value.item() if isinstance(value, np.generic) else value).strip()


def read(name: str, source, fields: Mapping) -> tuple[dict[str, list[Example]], str]:
    """({split: examples in file order}, metric) of every split of `source` (a seqio.TfdsDataSource)."""
    unknown = sorted(set(fields) - _KNOWN)
    if unknown:
        raise ValueError(f"register_tfds_task {name!r}: with rationale filters, unsupported option(s) {unknown}")
    f_in, f_label = fields.get("input_field", "input"), fields.get("label_field", "label")
    f_rat = fields.get("rationale_field", "rationale")
    f_tl = fields.get("teacher_label_field")
    names = fields.get("label_names")
    out = {}
    for split in source.splits:
        examples = []
        for i, row in enumerate(source.get_dataset(split=split, shuffle=False).as_numpy_iterator()):
            for f in (f_in, f_label, f_rat):
                if f not in row:
                    raise DataError(f"{name} (TFDS {split}) example {i}: no field {f!r}; it has {sorted(row)}")
            rationales = row[f_rat]
            labels = row.get(f_tl) if f_tl else None
            if isinstance(rationales, np.ndarray) and rationales.ndim == 1:
                labels = [""] * len(rationales) if labels is None else list(labels)
                candidates = [Rationale(_text(r), _text(lab)) for r, lab in zip(rationales, labels)]
            else:
                candidates = [Rationale(_text(rationales), "" if labels is None else _text(labels))]
            ex = Example(_text(row[f_in]), _text(row[f_label], names)).with_candidates(candidates)
            examples.append(ex)
        out[split] = examples
    return out, fields.get("metric", "exact_match")
