"""PersonDetector with a tiny randomly initialised RT-DETR (no network, HF_HUB_OFFLINE=1)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from server.errors import CHECKPOINT_INVALID, OFFLINE, ServerError
from server.pipeline.detector import PersonDetector, sort_boxes

transformers = pytest.importorskip("transformers")


def _tiny_rtdetr(id2label: dict[int, str]) -> torch.nn.Module:
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrResNetConfig

    backbone = RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                                  out_features=["stage2", "stage3", "stage4"], layer_type="basic")
    cfg = RTDetrConfig(backbone_config=backbone, d_model=32, encoder_hidden_dim=32, encoder_in_channels=[16, 16, 32],
                       decoder_in_channels=[32, 32, 32], encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=6,
                       decoder_layers=1, encoder_layers=1, decoder_attention_heads=2, encoder_attention_heads=2,
                       num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()})
    torch.manual_seed(0)
    return RTDetrForObjectDetection(cfg).eval()


def _processor():
    try:
        from transformers import RTDetrImageProcessorPil as Proc
    except ImportError:  # older transformers
        from transformers import RTDetrImageProcessor as Proc
    return Proc(size={"height": 64, "width": 64})


LABELS = {0: "person", 1: "car"}
# (person logit, car logit, cx, cy, w, h) per query, boxes normalised to the image.
QUERIES = [
    (4.0, -4.0, 0.70, 0.50, 0.20, 0.60),  # person, right
    (4.0, -4.0, 0.20, 0.50, 0.20, 0.60),  # person, left
    (-4.0, 4.0, 0.50, 0.50, 0.30, 0.30),  # car
    (-0.5, -4.0, 0.40, 0.40, 0.10, 0.10),  # person, score 0.38 < 0.5
    (4.0, -4.0, 0.20, 0.30, 0.20, 0.10),  # person, same x1 as query 1, larger y1
    (3.0, -4.0, 1.05, 0.50, 0.10, 0.20),  # person, partly outside on the right
]


def _detector(threshold: float = 0.5) -> PersonDetector:
    model = _tiny_rtdetr(LABELS)
    logits = torch.tensor([[q[0], q[1]] for q in QUERIES])[None]
    boxes = torch.tensor([q[2:] for q in QUERIES])[None]

    def replace_outputs(module, args, output):  # designed outputs, real post-processing
        output.logits = logits.clone()
        output.pred_boxes = boxes.clone()
        return output

    model.register_forward_hook(replace_outputs)
    return PersonDetector(model, _processor(), threshold=threshold)


def test_person_boxes_filtered_clipped_and_sorted() -> None:
    img = np.zeros((50, 100, 3), np.uint8)
    boxes, scores = _detector().detect(img)
    # Query 5 is clipped to zero width and dropped; ties on x1 are broken by y1 (official lexsort).
    expected = np.array([[10, 10, 30, 40], [10, 12.5, 30, 17.5], [60, 10, 80, 40]], np.float32)
    assert boxes.dtype == np.float32 and boxes.shape == (3, 4)
    np.testing.assert_allclose(boxes, expected, atol=1e-3)
    assert (scores > 0.5).all()
    np.testing.assert_array_equal(_detector()(img), boxes)


def test_threshold() -> None:
    img = np.zeros((50, 100, 3), np.uint8)
    assert len(_detector(threshold=0.3)(img)) == 4  # + the low-score person
    assert _detector(threshold=0.99)(img).shape == (0, 4)
    with pytest.raises(ServerError, match="threshold"):
        _detector(threshold=1.5)


def test_sort_boxes_is_official_lexsort() -> None:
    boxes = np.array([[5, 9, 9, 9], [1, 2, 3, 4], [1, 1, 9, 9], [1, 1, 3, 5]], np.float32)
    np.testing.assert_array_equal(sort_boxes(boxes), boxes[[3, 2, 1, 0]])


def test_model_without_person_class() -> None:
    with pytest.raises(ServerError, match="no 'person' class") as e:
        PersonDetector(_tiny_rtdetr({0: "cat", 1: "car"}), _processor())
    assert e.value.code == CHECKPOINT_INVALID


def test_bad_image() -> None:
    with pytest.raises(ServerError, match="RGB uint8"):
        _detector().detect(np.zeros((10, 10), np.uint8))


def test_save_and_load_local_directory(tmp_path: Path) -> None:
    model = _tiny_rtdetr(LABELS)
    model.save_pretrained(tmp_path)
    _processor().save_pretrained(tmp_path)
    det = PersonDetector.from_pretrained(tmp_path, threshold=0.5)
    assert det.person_label == 0
    out = det(np.zeros((40, 60, 3), np.uint8))
    assert out.dtype == np.float32 and out.ndim == 2 and out.shape[1] == 4


def test_loading_failures_are_clear(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ServerError, match="not in the local cache") as e:
        PersonDetector.from_pretrained("someone/not-a-cached-detector", cache_dir=str(tmp_path / "cache"))
    assert e.value.code == OFFLINE
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ServerError, match="Could not load the person detector") as e:
        PersonDetector.from_pretrained(broken)
    assert e.value.code == CHECKPOINT_INVALID
