"""Tiny local transformers classifiers for the moderation tests, built in seconds, never downloaded.

The head's weights are zero and its bias picks the scores, so the output is the same for every input:
`scores` {label: probability} is what the classifier says, whatever it is shown.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _bias(scores: dict[str, float]):
    import torch

    p = np.array(list(scores.values()), dtype=np.float64)
    return torch.tensor(np.log(p / p.sum()), dtype=torch.float32)


def make_text_classifier(path: Path, scores: dict[str, float]) -> Path:
    """A BERT text-classification folder whose softmax is `scores` for any text."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "the", "prompt"]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    labels = list(scores)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=len(labels),
                        id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(_bias(scores))
    model.save_pretrained(path)
    BertTokenizer(str(path / "vocab.txt")).save_pretrained(path)
    return path


def make_image_classifier(path: Path, scores: dict[str, float]) -> Path:
    """A ViT image-classification folder whose softmax is `scores` for any image."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    labels = list(scores)
    config = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=32, num_labels=len(labels),
                       id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    torch.manual_seed(0)
    model = ViTForImageClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(_bias(scores))
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path
