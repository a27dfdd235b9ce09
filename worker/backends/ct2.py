"""The CTranslate2 backend: a checkpoint's encoder converted once (cached on disk) and run by
``ctranslate2.Encoder``, behind the call a transformers base model answers (``model(**batch)[0]`` is the last
hidden state), so that the engine's own pooling, Dense layers and normalisation run on its outputs unchanged; and,
for the engines that read a sequence-classification head's logits (classification, rerank), that encoder with the
checkpoint's own head (its torch modules, at fp32) applied to the last hidden state, behind the call a transformers
``…ForSequenceClassification`` answers (``model(**batch).logits``).

CTranslate2 quantizes at load: one float32 conversion serves every compute type (`CTRANSLATE2_COMPUTE_TYPES`)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from worker.backends import CTRANSLATE2_COMPUTE_TYPES

log = logging.getLogger(__name__)

#: Bump when the conversion recipe changes, so that cached conversions are redone.
CONVERSION_VERSION = 1


def cache_root() -> Path:
    """Where conversions are kept: ``$INFERQ_CT2_CACHE``, else ``$XDG_CACHE_HOME/inferq/ctranslate2`` (default
    ``~/.cache``)."""
    explicit = os.environ.get("INFERQ_CT2_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "inferq" / "ctranslate2"


def conversion_key(source: str, revision: str | None) -> str:
    """A name for the conversion of ``source``: the directory's path and its files' sizes and times (a checkpoint
    saved again converts again), or the hub id and revision."""
    import ctranslate2

    h = hashlib.sha256(f"{CONVERSION_VERSION}\0{ctranslate2.__version__}\0{revision}\0".encode())
    path = Path(source)
    if path.is_dir():
        h.update(str(path.resolve()).encode())
        for f in sorted(path.iterdir()):
            if f.is_file():
                st = f.stat()
                h.update(f"\0{f.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    else:
        h.update(source.encode())
    return h.hexdigest()[:24]


def convert(source: str, revision: str | None = None, root: Path | None = None, *, layers: int | None = None) -> Path:
    """The CTranslate2 conversion of ``source`` (float32 weights), converted on first use: into a temporary
    directory renamed into place, so that two processes converting at once both end with a whole one.

    ``layers``: convert the encoder's first ``layers`` layers only (a local checkpoint directory; the rest of
    its layers run elsewhere, `worker.backends.first_token`)."""
    from ctranslate2.converters import TransformersConverter

    root = root or cache_root()
    key = conversion_key(source, revision)
    target = root / (key if layers is None else f"{key}-layers{layers}")
    if (target / "model.bin").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".converting-", dir=root))
    try:
        log.info("converting %s for CTranslate2 into %s", source, target)
        readable = _readable(source, scratch / "source", layers)
        with _quiet_transformers() if layers is not None else nullcontext():
            TransformersConverter(readable, revision=revision).convert(str(scratch / "model"), force=True)
        try:
            os.replace(scratch / "model", target)
        except OSError:
            if not (target / "model.bin").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' errors only: loading a checkpoint cut to fewer layers than its weights lists every weight of
    the layers past the cut as unexpected, which is what the cut means."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def _readable(source: str, shadow: Path, layers: int | None) -> str:
    """``source``, or a directory of links to its files with a config that CTranslate2's converter reads as
    wanted: ``position_embedding_type`` set where the config lacks it (transformers 5 no longer writes the default,
    ``absolute``, and CTranslate2's BERT-family loaders read it), and the layer count cut to ``layers`` (the
    converter loads the model through transformers, which then skips the weights of the layers past it)."""
    path = Path(source)
    config_file = path / "config.json"
    if not config_file.is_file():
        if layers is not None:
            raise ValueError(f"{source} is not a checkpoint directory: its layers cannot be cut")
        return source
    config = json.loads(config_file.read_text(encoding="utf-8"))
    changed = dict(config)
    if config.get("model_type") != "distilbert" and "position_embedding_type" not in config:
        changed["position_embedding_type"] = "absolute"
    if layers is not None:
        changed["n_layers" if config.get("model_type") == "distilbert" else "num_hidden_layers"] = layers
    if changed == config:
        return source
    shadow.mkdir(parents=True)
    for f in path.iterdir():
        if f.name != "config.json":
            (shadow / f.name).symlink_to(f.resolve())
    (shadow / "config.json").write_text(json.dumps(changed), encoding="utf-8")
    return str(shadow)


#: The model types that number positions from their padding index + 1.
ROBERTA_FAMILY = frozenset({"roberta", "xlm-roberta", "camembert"})


class Ct2Encoder:
    """A ``ctranslate2.Encoder`` answering ``model(input_ids=…, attention_mask=…, token_type_ids=…)`` with
    ``(last_hidden_state,)`` as a float32 torch tensor on the model's device (right-padded rows: the positions past
    each row's length hold whatever the encoder left there; the attention mask hides them from pooling)."""

    def __init__(self, encoder: Any, config: Any, device: Any, compute_type: str) -> None:
        self.encoder = encoder
        self.config = config
        self.device = device
        self.compute_type = compute_type
        #: The longest sequence the position table holds (RoBERTa's positions start after its padding index):
        #: CTranslate2 does not check it, torch's embedding lookup raises, and so does this.
        positions = getattr(config, "max_position_embeddings", None)
        offset = int(config.pad_token_id) + 1 if getattr(config, "model_type", None) in ROBERTA_FAMILY else 0
        self.max_positions: int | None = int(positions) - offset if positions is not None else None

    def __call__(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None, **_: Any) -> tuple[Any]:
        import ctranslate2
        import torch

        if self.max_positions is not None and input_ids.shape[1] > self.max_positions:
            raise IndexError(
                f"a sequence of {input_ids.shape[1]} tokens is longer than the model's {self.max_positions} positions"
            )

        lengths = attention_mask.sum(dim=1, dtype=torch.int32)
        ids = input_ids.to(torch.int32).contiguous()
        on_cpu = ids.device.type == "cpu"
        types = None
        if token_type_ids is not None and bool(token_type_ids.any()):
            types = token_type_ids.tolist()
        out = self.encoder.forward_batch(
            ctranslate2.StorageView.from_array(ids.numpy() if on_cpu else ids),
            ctranslate2.StorageView.from_array(lengths.numpy() if on_cpu else lengths.contiguous()),
            token_type_ids=types,
        )
        if on_cpu:
            import numpy as np

            states = torch.from_numpy(np.asarray(out.last_hidden_state))
        else:
            states = torch.as_tensor(out.last_hidden_state, device=self.device)
        return (states.float(),)

    def eval(self) -> Ct2Encoder:
        return self

    def to(self, *_: Any, **__: Any) -> Ct2Encoder:
        return self


def load_encoder(
    source: str,
    revision: str | None,
    config: Any,
    device: Any,
    precision: str,
    layers: int | None = None,
    *,
    lanes: int = 1,
) -> Ct2Encoder:
    """``source``'s encoder (its first ``layers`` layers, or all) on ``device`` at ``precision`` (converted first
    if need be), with torch's thread count (the worker sets it per pool process, `worker.threads`): one call at a
    time on all of them, or (``lanes`` > 1, on a CPU) ``lanes`` calls at once, one thread each."""
    import ctranslate2
    import torch

    compute_type = CTRANSLATE2_COMPUTE_TYPES[precision]
    path = convert(source, revision, layers=layers)
    index = device.index if device.type == "cuda" and device.index is not None else 0
    threads = torch.get_num_threads()
    encoder = ctranslate2.Encoder(
        str(path),
        device="cuda" if device.type == "cuda" else "cpu",
        device_index=index,
        compute_type=compute_type,
        inter_threads=lanes if device.type == "cpu" else 1,
        intra_threads=(1 if lanes > 1 else threads) if device.type == "cpu" else 0,
    )
    # CTranslate2 sets the calling thread's OpenMP threads to its ``intra_threads``: torch's, in this thread, stay.
    torch.set_num_threads(threads)
    return Ct2Encoder(encoder, config, device, compute_type)


class Ct2SequenceClassifier:
    """CTranslate2's encoder and the checkpoint's classification head, answering ``model(**batch)`` with a
    transformers ``SequenceClassifierOutput`` (``.logits``, float32). The head is the checkpoint's own torch modules
    (`classification_head`), so that its weights and its pooling (DistilBERT's first token through
    ``pre_classifier`` and ReLU, BERT's pooler, RoBERTa's dense-tanh head) are transformers' to the bit.

    With ``last_layer`` (`worker.backends.first_token.FirstTokenLayer`), CTranslate2 runs every layer but the last
    (`load_classifier`) and the last runs in torch, at fp32, for the first token only: the only one the head reads."""

    def __init__(self, encoder: Ct2Encoder, head: Any, config: Any, last_layer: Any = None, lanes: int = 1) -> None:
        self.encoder = encoder
        self.head = head
        self.config = config
        self.last_layer = last_layer
        self.compute_type = encoder.compute_type
        #: Micro-batches this model runs at once (on a CPU, one thread each: `lane_pool`); 1: one at a time.
        self.lanes = lanes
        self._lane_pool: ThreadPoolExecutor | None = None
        self._lane_pool_lock = threading.Lock()

    @property
    def lane_pool(self) -> ThreadPoolExecutor:
        """The `lanes` threads that run micro-batches at once (made on first use): CTranslate2 releases the GIL
        and runs each call on one of its ``inter_threads`` replicas, one thread each; torch's part (the last layer
        for the first token, the head) takes one intra-op thread in each lane."""
        with self._lane_pool_lock:
            if self._lane_pool is None:
                self._lane_pool = ThreadPoolExecutor(self.lanes, "ct2-lane")
            return self._lane_pool

    def __call__(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None, **_: Any) -> Any:
        from transformers.modeling_outputs import SequenceClassifierOutput

        (states,) = self.encoder(input_ids, attention_mask, token_type_ids)
        states = states.to(self.encoder.device)
        if self.last_layer is not None:
            from worker.backends.first_token import padding_mask

            mask = padding_mask(attention_mask.to(states.device))
            if mask is not None:  # padded positions hold whatever CTranslate2 left there: keys and values of zero
                states = states.masked_fill(~mask[:, 0, 0, :, None], 0.0)
            states = self.last_layer(states, mask)
        return SequenceClassifierOutput(logits=self.head(states).float())

    def eval(self) -> Ct2SequenceClassifier:
        return self

    def to(self, *_: Any, **__: Any) -> Ct2SequenceClassifier:
        return self


#: The model types whose sequence-classification head `classification_head` knows (CTranslate2 converts the
#: encoder of each of `worker.backends.CTRANSLATE2_MODEL_TYPES`; the head is what differs).
HEAD_MODEL_TYPES = frozenset({"bert", "distilbert", "roberta", "xlm-roberta", "camembert"})


def classification_head(model: Any) -> Any:
    """The head of a transformers ``…ForSequenceClassification`` as a function of the encoder's last hidden state
    ``[B, T, H]`` → logits ``[B, labels]``, made of the model's own modules (in eval mode: dropout off)."""
    import torch

    kind = model.config.model_type
    model.eval()
    if kind == "distilbert":
        pre, classifier = model.pre_classifier, model.classifier

        def distilbert(states: Any) -> Any:
            return classifier(torch.relu(pre(states[:, 0])))

        return distilbert
    if kind == "bert":
        pooler, classifier = model.bert.pooler, model.classifier

        def bert(states: Any) -> Any:
            return classifier(pooler(states) if pooler is not None else states[:, 0])

        return bert
    if kind in ("roberta", "xlm-roberta", "camembert"):
        return model.classifier  # RobertaClassificationHead: the first token, dense, tanh, out_proj
    raise ValueError(f"no sequence-classification head known for model type {kind!r}")


def load_classifier(
    source: str,
    revision: str | None,
    model: Any,
    device: Any,
    precision: str,
    *,
    first_token: bool = True,
    lanes: int | None = None,
) -> Ct2SequenceClassifier:
    """``source``'s encoder on CTranslate2 at ``precision`` and the head of ``model`` (the checkpoint loaded by
    transformers at fp32, whose encoder is then dropped). Where the head reads the first token only
    (`worker.backends.first_token`), the engine reads nothing else (``first_token``) and the checkpoint is a
    directory, CTranslate2 runs every layer but the last, and ``model``'s last layer runs for the first token alone."""
    from worker.backends.first_token import FirstTokenLayer, encoder_layers, layer_kind, refusal

    layers = encoder_layers(model)
    kind = layer_kind(layers[-1]) if layers is not None else None
    last_layer = None
    if first_token and layers is not None and len(layers) > 1 and kind is not None and refusal(model) is None:
        last_layer = FirstTokenLayer(layers[-1], kind).eval() if Path(source).is_dir() else None
    cut = len(layers) - 1 if last_layer is not None and layers is not None else None
    if lanes is None:
        lanes = classifier_lanes(device)
    encoder = load_encoder(source, revision, model.config, device, precision, layers=cut, lanes=lanes)
    head = classification_head(model)
    base = getattr(model, model.base_model_prefix, None)
    # The torch encoder's weights go (CTranslate2 runs it); the head, BERT's pooler and the last layer stay.
    for part in ("embeddings", "encoder", "transformer"):
        if base is not None and getattr(base, part, None) is not None:
            setattr(base, part, None)
    model.to(device)
    if last_layer is not None:
        last_layer.to(device)
    return Ct2SequenceClassifier(encoder, head, model.config, last_layer, lanes=lanes if device.type == "cpu" else 1)


def classifier_lanes(device: Any) -> int:
    """Micro-batches a classifier on ``device`` runs at once: on a CPU torch's thread count (the worker's share of
    the cores, `worker.threads`), one thread each; on an accelerator 1."""
    import torch

    return max(1, torch.get_num_threads()) if device.type == "cpu" else 1
