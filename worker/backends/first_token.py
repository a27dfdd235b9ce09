"""The one-token last layer: a sequence-classification head (BERT's pooler, DistilBERT's and RoBERTa's heads) and
a cross-encoder read only position 0 of the encoder's last layer, so that layer needs its output for token 0 alone.

In the last layer every token's key and value are still computed (token 0 attends to all of them), but the query,
the attention's output projection, the two layer norms and the feed-forward network run for token 0 only. The
result is the same function, not an approximation: token 0's output depends on the other tokens only through their
keys and values, and every other position's output is never read. On a 6-layer model with 4·H² of projections and
8·H² of feed-forward per token and layer, this leaves 2·H² of the last layer's 12·H², about 1/7 of the whole
forward pass (`worker.backends` cites the measurement).

Two uses: on torch, `apply` swaps the model's last layer for `FirstTokenLayer`, which runs the layer's own
modules (weights, dtype, dynamic int8 quantization alike) and returns ``[B, 1, H]``, so that transformers' own
embeddings, masks, earlier layers and head run unchanged around it; on CTranslate2, the encoder is converted
without its last layer and `FirstTokenLayer` runs that layer in torch on CTranslate2's output
(`worker.backends.ct2`).

Attention is torch's ``scaled_dot_product_attention`` with the mask transformers built for the layer (boolean for
SDPA, additive for eager), its query rows cut to the first; models on another attention implementation (flash,
flex) keep their last layer whole."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: The classes whose head reads position 0 of the last layer and nothing else, and the model types whose layers
#: `FirstTokenLayer` knows (`layer_kind`).
FIRST_TOKEN_MODELS = frozenset(
    {
        "BertForSequenceClassification",
        "DistilBertForSequenceClassification",
        "RobertaForSequenceClassification",
        "XLMRobertaForSequenceClassification",
        "CamembertForSequenceClassification",
    }
)

#: The attention implementations whose masks `FirstTokenLayer` reads (4-D boolean or additive, or none).
ATTENTION_IMPLEMENTATIONS = frozenset({"sdpa", "eager"})


def layer_kind(layer: nn.Module) -> str | None:
    """``"bert"`` for a BERT-style layer (``attention.self.query`` …, RoBERTa's family too), ``"distilbert"`` for
    DistilBERT's ``TransformerBlock``, ``None`` for anything else (a decoder layer, a layer with cross-attention)."""
    if getattr(layer, "is_decoder", False) or getattr(layer, "add_cross_attention", False):
        return None
    attention = getattr(layer, "attention", None)
    if (
        hasattr(getattr(attention, "self", None), "query")
        and hasattr(layer, "intermediate")
        and hasattr(layer, "output")
    ):
        return "bert"
    if hasattr(attention, "q_lin") and hasattr(layer, "ffn"):
        return "distilbert"
    return None


class FirstTokenLayer(nn.Module):
    """A transformer layer (``layer``, its own modules) computing the output of token 0 only: called as the layer
    is (``hidden_states [B, T, H]``, the mask transformers made for it) it returns ``[B, 1, H]``."""

    def __init__(self, layer: Any, kind: str) -> None:
        super().__init__()
        self.layer = layer
        self.kind = kind
        self.heads = int(layer.attention.self.num_attention_heads if kind == "bert" else layer.attention.n_heads)

    def forward(self, hidden_states: torch.Tensor, attention_mask: Any = None, *_: Any, **__: Any) -> torch.Tensor:
        first = hidden_states[:, :1]
        if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4 and attention_mask.shape[-2] > 1:
            attention_mask = attention_mask[:, :, :1]  # token 0's row: [B, 1, 1, T]
        layer: Any = self.layer
        if self.kind == "bert":
            sa = layer.attention.self
            context = self._attend(sa.query(first), sa.key(hidden_states), sa.value(hidden_states), attention_mask)
            attended = layer.attention.output(context, first)  # dense, residual, LayerNorm
            return layer.output(layer.intermediate(attended), attended)
        sa = layer.attention
        context = self._attend(sa.q_lin(first), sa.k_lin(hidden_states), sa.v_lin(hidden_states), attention_mask)
        attended = layer.sa_layer_norm(sa.out_lin(context) + first)
        return layer.output_layer_norm(layer.ffn(attended) + attended)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any) -> torch.Tensor:
        """Multi-head attention of one query row per sequence over every key: ``[B, 1, H]``."""
        b, t, width = k.shape
        d = width // self.heads

        def split(x: torch.Tensor, n: int) -> torch.Tensor:
            return x.view(b, n, self.heads, d).transpose(1, 2)

        out = nn.functional.scaled_dot_product_attention(
            split(q, 1), split(k, t), split(v, t), attn_mask=mask, scale=d**-0.5
        )
        return out.transpose(1, 2).reshape(b, 1, width)


def encoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The list of the encoder's layers of a ``…ForSequenceClassification`` (``encoder.layer`` or DistilBERT's
    ``transformer.layer``), ``None`` where there is none."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    for part in ("encoder", "transformer"):
        layers = getattr(getattr(base, part, None), "layer", None)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    return None


def refusal(model: nn.Module) -> str | None:
    """Why the one-token last layer does not apply to ``model``, or ``None`` where it does."""
    name = type(model).__name__
    if name not in FIRST_TOKEN_MODELS:
        return f"{name}'s head is not one known to read only the first token"
    implementation = getattr(model.config, "_attn_implementation", None)
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        return f"attention implementation {implementation!r}"
    layers = encoder_layers(model)
    if layers is None:
        return "no encoder layers found"
    if isinstance(layers[-1], FirstTokenLayer):
        return None
    if layer_kind(layers[-1]) is None:
        return f"its last layer ({type(layers[-1]).__name__}) is not one this knows"
    return None


def apply(model: nn.Module) -> bool:
    """Swap ``model``'s last encoder layer for its `FirstTokenLayer` (in place); ``False`` where it does not apply
    (`refusal`), the model then unchanged."""
    if refusal(model) is not None:
        return False
    layers = encoder_layers(model)
    assert layers is not None
    last = layers[-1]
    if not isinstance(last, FirstTokenLayer):
        kind = layer_kind(last)
        assert kind is not None
        layers[-1] = FirstTokenLayer(last, kind)
    return True


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor | None:
    """A ``[B, T]`` 0/1 attention mask as SDPA's boolean ``[B, 1, 1, T]`` (``None`` where nothing is padded)."""
    if bool(attention_mask.all()):
        return None
    return attention_mask.bool()[:, None, None, :]
