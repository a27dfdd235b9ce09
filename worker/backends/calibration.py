"""``precision: auto`` keeps its tier: before a worker runs a model at the precision ``auto`` resolved to, it runs
the model at that precision and at fp32 on `CALIBRATION_TEXTS` and measures the first against the second
(`inferq.precision`); a precision that misses its tier for this model is passed over for fp32, with one log line
saying why.

What is compared is the model's first output: a bare encoder's hidden states mean-pooled over the real tokens (the
vectors of a mean-pooling embedding model, and close to any other pooling's), a head's logits by their top label
(per item for a sequence head, per real token for a token-level one)."""

from __future__ import annotations

from typing import Any

import numpy as np

from inferq.precision import Quality, label_quality, vector_quality

#: Short and long English sentences, plain and with numbers, names and punctuation: enough to see a precision's
#: rounding and small enough to cost a fraction of a second at load.
CALIBRATION_TEXTS = (
    "The meeting was moved to Thursday afternoon because the room was booked.",
    "Prices rose 3.2% in March, the fastest pace since the autumn of 2023.",
    "She opened the window, and the smell of rain filled the kitchen.",
    "How many kilometres is it from Lisbon to Madrid by train?",
    "The new library opens at nine and closes late on weekdays.",
    "Our results suggest that the drug lowers blood pressure in older patients.",
    "He forgot his umbrella again.",
    "The team lost the final 2-1 after a penalty in the last minute of extra time.",
    "Install the package, set the environment variable, then restart the server.",
    "A quiet village sits at the foot of the mountain, beside a cold green lake.",
    "Why does the compiler reject this function when the types look the same?",
    "The committee will publish its report on energy policy next spring.",
    "I loved the film, although the ending felt rushed and a little too neat.",
    "Shares of the company fell sharply after it cut its forecast for the year.",
    "Water boils at a lower temperature at high altitude because the air pressure is lower.",
    "Please send me the invoice by Friday.",
    "The museum's new wing holds paintings from the seventeenth and eighteenth centuries, most of them Dutch.",
    "Heavy snow closed the airport for two days and stranded thousands of travellers.",
    "They planted tomatoes, beans and basil in the small garden behind the house.",
    "The recipe calls for two eggs, a cup of flour and a pinch of salt.",
    "Is the battery covered by the warranty if it stops holding a charge?",
    "The river flooded the lower streets of the town for the third time this decade.",
    "Researchers trained the model on a million labelled images and tested it on new ones.",
    "Thanks, that works.",
)


def first_output(
    model: Any, tokenizer: Any, device: Any, texts: tuple[str, ...] = CALIBRATION_TEXTS
) -> tuple[Any, Any]:
    """The model's first output on ``texts`` (padded batch, float32, on the CPU) and the attention mask."""
    import torch

    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=128, return_tensors="pt")
    batch = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.inference_mode():
        out = model(**batch)
    first = out[0] if isinstance(out, tuple) else next(iter(out.values()))
    return first.float().cpu(), enc["attention_mask"]


def compare(got: Any, want: Any, mask: Any, *, vectors: bool) -> Quality:
    """A candidate's first output against fp32's: pooled vectors (``vectors``: a bare encoder's hidden states) or
    top labels."""
    g, w, m = got.numpy(), want.numpy(), mask.numpy().astype(bool)
    if vectors and g.ndim == 3:
        weights = m[:, :, None].astype(np.float64)
        pooled = [(x * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0) for x in (g, w)]
        return vector_quality(pooled[0], pooled[1])
    if g.ndim == 3:  # a token-level head: one label per real token
        return label_quality(g.argmax(-1)[m].tolist(), w.argmax(-1)[m].tolist())
    if g.ndim == 2 and g.shape[-1] > 1:
        return label_quality(g.argmax(-1).tolist(), w.argmax(-1).tolist())
    # One score per item (a cross-encoder): the scores of all the items as one vector.
    return vector_quality(g.reshape(1, -1), w.reshape(1, -1))
