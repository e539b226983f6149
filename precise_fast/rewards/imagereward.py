"""ImageReward (Xu et al. 2023, arXiv 2304.05977) - optional: only when its package is installed.

The ``image-reward`` package (github.com/THUDM/ImageReward) provides the model class: a BLIP
ViT-L image encoder, a BERT text encoder cross-attending to the image, and an MLP on the
[CLS] feature, standardised with the fixed mean/std the class defines. Its ``load()``
downloads ``med_config.json`` and the ``bert-base-uncased`` tokenizer, so we build the class
ourselves from local files (see :mod:`precise_fast.model_paths`) and redirect the tokenizer
lookup to the local copy. Scoring follows ``ImageReward.score``/``inference_rank``: 224 px
bicubic resize + centre crop + CLIP mean/std (done here on device), prompts padded to 35 tokens.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .base import RewardModel, ScoreOutput
from .clip_scorers import _device_dtype
from .preprocess import ClipPreprocess

PACKAGE_HINT = "install the optional package with `pip install image-reward` (it is not a dependency of precise_fast)"


def imagereward_available() -> bool:
    """True when the ``ImageReward`` package can be imported."""
    return importlib.util.find_spec("ImageReward") is not None


@contextlib.contextmanager
def _local_bert_tokenizer(local_dir: Path):
    """Make ``BertTokenizer.from_pretrained('bert-base-uncased')`` read ``local_dir`` offline."""
    from transformers import BertTokenizer

    own = BertTokenizer.__dict__.get("from_pretrained")  # usually inherited, so None
    bound = BertTokenizer.from_pretrained

    def redirected(cls, name, *args, **kwargs):
        if str(name) == "bert-base-uncased":
            name, kwargs = str(local_dir), {**kwargs, "local_files_only": True}
        return bound.__func__(cls, name, *args, **kwargs)

    BertTokenizer.from_pretrained = classmethod(redirected)
    try:
        yield
    finally:
        if own is None:
            del BertTokenizer.from_pretrained
        else:
            BertTokenizer.from_pretrained = own


class ImageRewardScore(RewardModel):
    """ImageReward v1.0 standardised reward (higher is better, roughly N(0, 1) on its data)."""

    MAX_TEXT_TOKENS = 35  # ImageReward.score pads/truncates prompts to 35 tokens

    def __init__(
        self,
        checkpoint: str | Path,
        med_config: str | Path,
        bert_tokenizer_dir: str | Path,
        device="cpu",
        dtype=torch.float32,
        *,
        batch_size: int = 16,
        name: str = "imagereward",
    ):
        if not imagereward_available():
            raise ImportError(f"reward 'imagereward' needs the ImageReward package: {PACKAGE_HINT}")
        from ImageReward.ImageReward import ImageReward as _ImageRewardModel

        self.name = name
        self.device, self.dtype = _device_dtype(device, dtype)
        self.batch_size = int(batch_size)
        with _local_bert_tokenizer(Path(bert_tokenizer_dir)):
            model = _ImageRewardModel(med_config=str(med_config), device=self.device)
        state = torch.load(Path(checkpoint), map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        # ImageReward's own loader is non-strict (its checkpoint omits unused BLIP heads);
        # the parts that score must all be there.
        critical = [k for k in missing if k.startswith(("mlp.", "blip.visual_encoder.", "blip.text_encoder."))]
        if critical:
            raise RuntimeError(
                f"imagereward: checkpoint {checkpoint} lacks {len(critical)} weights, e.g. {critical[:3]}"
            )
        model.blip.to(self.device, self.dtype)
        model.mlp.to(self.device, torch.float32)
        self.model = model.eval().requires_grad_(False)
        self.mean, self.std = float(model.mean), float(model.std)
        self.preprocess = ClipPreprocess(shortest_edge=224, crop=(224, 224), crop_rounding="round")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[Mapping] = ()) -> ScoreOutput:
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{self.name}: {images.shape[0]} images but {len(prompts)} prompts")
        pixels = self.preprocess(images.to(self.device, non_blocking=True))
        tokens = self.model.blip.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=self.MAX_TEXT_TOKENS, return_tensors="pt"
        )
        ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
        out = []
        for start in range(0, pixels.shape[0], self.batch_size):
            sl = slice(start, start + self.batch_size)
            image_embeds = self.model.blip.visual_encoder(pixels[sl].to(self.dtype))
            image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
            text = self.model.blip.text_encoder(
                ids[sl],
                attention_mask=mask[sl],
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=image_atts,
                return_dict=True,
            )
            features = text.last_hidden_state[:, 0, :].to(torch.float32)
            out.append(((self.model.mlp(features) - self.mean) / self.std).reshape(-1))
        return ScoreOutput.from_scores(torch.cat(out).to(images.device))

    def close(self) -> None:
        self.model = None
