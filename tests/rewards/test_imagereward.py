"""ImageReward is optional: a clear error without its package; with a package of the same
shape (a stand-in written here, since the real one is not installed) our glue loads local
files only and computes ``(mlp(text_cls) - mean) / std`` as ImageReward.score does."""

import importlib
import sys
import textwrap

import pytest
import torch
from PIL import Image

from precise_fast import model_paths
from precise_fast.model_paths import WeightsNotFoundError
from precise_fast.rewards import build_scorer
from precise_fast.rewards.imagereward import _local_bert_tokenizer, imagereward_available
from precise_fast.rewards.preprocess import to_uint8

# Same public shape as ImageReward.ImageReward.ImageReward: .blip.{tokenizer, visual_encoder,
# text_encoder}, .mlp, .mean, .std; BLIP builds its tokenizer from 'bert-base-uncased'.
STAND_IN = textwrap.dedent("""
    from types import SimpleNamespace
    import torch.nn as nn
    from transformers import BertTokenizer

    class _Visual(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch = nn.Conv2d(3, 8, 56, stride=56)
        def forward(self, x):
            return self.patch(x).flatten(2).transpose(1, 2)

    class _Text(nn.Module):
        def __init__(self, vocab):
            super().__init__()
            self.embed = nn.Embedding(vocab, 8)
            self.mix = nn.Linear(8, 8)
        def forward(self, input_ids, attention_mask, encoder_hidden_states, encoder_attention_mask, return_dict=True):
            ctx = (encoder_hidden_states * encoder_attention_mask[..., None]).mean(1, keepdim=True)
            return SimpleNamespace(last_hidden_state=self.mix(self.embed(input_ids) * attention_mask[..., None] + ctx))

    class _Blip(nn.Module):
        def __init__(self):
            super().__init__()
            self.tokenizer = BertTokenizer.from_pretrained("bert-base-uncased")
            self.visual_encoder = _Visual()
            self.text_encoder = _Text(len(self.tokenizer))

    class ImageReward(nn.Module):
        def __init__(self, med_config, device="cpu"):
            super().__init__()
            open(med_config).read()
            self.blip = _Blip()
            self.mlp = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 1))
            self.mean = 0.16717362830052426
            self.std = 1.0333394966054072
""")


def test_clear_error_without_the_package(model_root):
    if imagereward_available():
        pytest.skip("ImageReward is installed here")
    with pytest.raises(ImportError, match="pip install image-reward"):
        build_scorer("imagereward", model_root=model_root)


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    from transformers import BertTokenizer

    package = tmp_path / "pkg" / "ImageReward"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "ImageReward.py").write_text(STAND_IN)
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    importlib.invalidate_caches()
    root = tmp_path / "root"
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "cat", "dog", "photo", "of"]))
    BertTokenizer(str(vocab)).save_pretrained(root / model_paths.IMAGEREWARD_BERT_TOKENIZER)
    (root / model_paths.IMAGEREWARD_MED_CONFIG).write_text("{}")
    from ImageReward.ImageReward import ImageReward

    with _local_bert_tokenizer(root / model_paths.IMAGEREWARD_BERT_TOKENIZER):
        torch.manual_seed(0)
        reference = ImageReward(root / model_paths.IMAGEREWARD_MED_CONFIG).eval()
    torch.save(reference.state_dict(), root / model_paths.IMAGEREWARD_CHECKPOINT)
    yield root, reference
    for name in [m for m in sys.modules if m == "ImageReward" or m.startswith("ImageReward.")]:
        del sys.modules[name]


def test_scores_follow_imagereward(stand_in):
    from torchvision import transforms

    root, reference = stand_in
    images = torch.rand(3, 3, 240, 260, generator=torch.Generator().manual_seed(1))
    prompts = ["a red cat", "a dog", "a photo of a cat"]
    out = build_scorer("imagereward", model_root=root, batch_size=2)(images, prompts, None)
    # ImageReward's own path: PIL, Resize(224, bicubic), CenterCrop, ToTensor, CLIP Normalize.
    transform = transforms.Compose(
        [
            transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
        ]
    )
    pixels = torch.stack([transform(Image.fromarray(a)) for a in to_uint8(images).permute(0, 2, 3, 1).numpy()])
    tokens = reference.blip.tokenizer(
        prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt"
    )
    with torch.no_grad():
        emb = reference.blip.visual_encoder(pixels)
        text = reference.blip.text_encoder(
            tokens.input_ids,
            attention_mask=tokens.attention_mask,
            encoder_hidden_states=emb,
            encoder_attention_mask=torch.ones(emb.shape[:-1], dtype=torch.long),
            return_dict=True,
        )
        want = ((reference.mlp(text.last_hidden_state[:, 0, :]) - reference.mean) / reference.std).squeeze(1)
    torch.testing.assert_close(out.scores, want, atol=2e-3, rtol=0)
    assert out.valid.all()
    # The tokenizer lookup was redirected only while building.
    from transformers import BertTokenizer

    assert "from_pretrained" not in BertTokenizer.__dict__


def test_checkpoint_without_scoring_weights_is_refused(stand_in):
    root, reference = stand_in
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("mlp.")}
    torch.save(state, root / model_paths.IMAGEREWARD_CHECKPOINT)
    with pytest.raises(RuntimeError, match="mlp"):
        build_scorer("imagereward", model_root=root)


def test_missing_files_are_named(stand_in):
    root, _ = stand_in
    (root / model_paths.IMAGEREWARD_MED_CONFIG).unlink()
    with pytest.raises(WeightsNotFoundError, match="med_config.json"):
        build_scorer("imagereward", model_root=root)
