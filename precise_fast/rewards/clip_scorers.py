"""PickScore, CLIPScore and the LAION aesthetic score: transformers ``CLIPModel`` scorers.

All three embed images with a CLIP image tower after on-device preprocessing
(:mod:`.preprocess`), tokenise prompts on the host and embed each *distinct* prompt once
(GRPO scores several images per prompt), and return float32 scores on the images' device.

Conventions (each cited; the scale matters only for logging, since the Precise recipe
standardises every component before combining):

* **PickScore** (Kirstain et al. 2023, arXiv 2305.01569; model card of
  ``yuvalkirstain/PickScore_v1``): ``logit_scale.exp() * cos(image_emb, text_emb)`` with the
  PickScore CLIP-H model and the ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` processor.
  Raw values are around 20-23. Flow-GRPO (``flow_grpo/pickscore_scorer.py``) divides by 26
  ("norm to 0-1") and logs and trains on that; the Precise recipe is built on that code
  base and reports rewards on that scale, so our default ``scale`` is ``1/26``. The raw value
  is returned too, as the extra ``pickscore_raw`` (the number paper tables quote).
* **CLIPScore**: two conventions exist. Hessel et al. 2021 (arXiv 2104.08718) define
  ``CLIP-S = 2.5 * max(cos, 0)``. Flow-GRPO's ``flow_grpo/clip_scorer.py`` (the one the
  GRPO papers' ``clipscore`` reward uses) takes the CLIP ViT-L/14 ``logits_per_image``
  diagonal, ``logit_scale.exp() * cos`` (= ``100 * cos`` for that model), divided by 30.
  Default ``convention="flow_grpo"`` for comparability with those runs; ``"hessel"`` and
  ``"cosine"`` are available. The cosine is always returned as ``clipscore_cosine``.
* **Aesthetic** (LAION improved-aesthetic-predictor, github.com/christophschuhmann/
  improved-aesthetic-predictor; used as a reward by DDPO): a 5-layer MLP (768-1024-128-64-16-1,
  dropout between, no activations) on the L2-normalised CLIP ViT-L/14 image embedding; the
  older single-linear LAION head is accepted too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn

from .. import model_paths
from .base import RewardModel, ScoreOutput
from .preprocess import ClipPreprocess


def _pooled(output) -> torch.Tensor:
    """transformers 5 returns a model output from get_*_features; older versions a tensor."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        pooled = output[0] if isinstance(output, (tuple, list)) else output["pooler_output"]
    return pooled


def _normalize(x: torch.Tensor) -> torch.Tensor:
    x = x.to(torch.float32)
    return x / x.norm(p=2, dim=-1, keepdim=True)


def embed_images(encode, preprocess, images: torch.Tensor, device, dtype, batch_size: int) -> torch.Tensor:
    """L2-normalised float32 embeddings ``(B, D)`` of images in [0, 1], encoded ``batch_size`` at a time."""
    pixels = preprocess(images.to(device, non_blocking=True))
    chunks = [encode(pixels[start : start + batch_size].to(dtype)) for start in range(0, pixels.shape[0], batch_size)]
    return _normalize(torch.cat(chunks))


def embed_unique_prompts(encode, prompts: Sequence[str], device, batch_size: int) -> torch.Tensor:
    """L2-normalised float32 embeddings ``(B, D)``: each distinct prompt encoded once (a group
    shares its prompt), ``batch_size`` prompts at a time, then gathered back in order."""
    position = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
    unique = list(position)
    index = torch.tensor([position[p] for p in prompts], device=device)
    chunks = [encode(unique[start : start + batch_size]) for start in range(0, len(unique), batch_size)]
    return _normalize(torch.cat(chunks))[index]


def _device_dtype(device, dtype) -> tuple[torch.device, torch.dtype]:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if not isinstance(dtype, torch.dtype):
        dtype = getattr(torch, str(dtype))
    return device, dtype


class HFClipBackbone:
    """A transformers CLIP model + its processor, loaded from local folders only."""

    def __init__(
        self,
        model_dir: str | Path,
        processor_dir: str | Path,
        device="cpu",
        dtype=torch.float32,
        *,
        batch_size: int = 32,
        scorer: str = "clip",
    ):
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        self.device, self.dtype = _device_dtype(device, dtype)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_dir, self.processor_dir = Path(model_dir), Path(processor_dir)
        # Load in float32 and keep the temperature in float32: exp() of a bf16 logit_scale
        # (4.6052 -> 4.5938) would shift every PickScore by ~1%. Then cast the towers.
        model = CLIPModel.from_pretrained(self.model_dir, local_files_only=True, dtype=torch.float32)
        self._logit_scale = model.logit_scale.detach().to(torch.float32).exp().to(self.device)
        self.model = model.to(self.device, self.dtype).eval().requires_grad_(False)
        image_processor = CLIPImageProcessor.from_pretrained(self.processor_dir, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(self.processor_dir, local_files_only=True)
        self.preprocess = ClipPreprocess.from_hf_image_processor(image_processor)
        self.max_length = int(getattr(self.model.config.text_config, "max_position_embeddings", 77))
        self.scorer = scorer

    @property
    def logit_scale(self) -> torch.Tensor:
        return self._logit_scale

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.projection_dim)

    @torch.no_grad()
    def image_embeds(self, images: torch.Tensor, preprocess: ClipPreprocess | None = None) -> torch.Tensor:
        """L2-normalised float32 image embeddings ``(B, D)`` on the model's device (``preprocess``:
        a scorer's own preprocessing instead of the processor's)."""
        return embed_images(
            lambda pixels: _pooled(self.model.get_image_features(pixel_values=pixels)),
            preprocess or self.preprocess, images, self.device, self.dtype, self.batch_size,
        )

    @torch.no_grad()
    def text_embeds(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised float32 text embeddings ``(B, D)``; each distinct prompt encoded once."""
        def encode(chunk: list[str]) -> torch.Tensor:
            tokens = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            tokens = {
                k: v.to(self.device, non_blocking=True) for k, v in tokens.items() if k in ("input_ids", "attention_mask")
            }
            return _pooled(self.model.get_text_features(**tokens))

        return embed_unique_prompts(encode, prompts, self.device, self.batch_size)


def load_hf_clip(
    model_dir, processor_dir, device, dtype, *, batch_size: int, scorer: str, hint: str, shared: dict | None = None
) -> HFClipBackbone:
    """Check the folders, then load (or reuse from ``shared``) a CLIP backbone."""
    model_paths.require_hf_model_dir(Path(model_dir), scorer=scorer, hint=hint)
    model_paths.require_hf_processor_dir(Path(processor_dir), scorer=scorer, hint=hint)
    device, dtype = _device_dtype(device, dtype)
    key = ("hf_clip", str(Path(model_dir).resolve()), str(Path(processor_dir).resolve()), str(device), str(dtype))
    if shared is not None and key in shared:
        backbone = shared[key]
        backbone.batch_size = min(backbone.batch_size, int(batch_size))
        return backbone
    backbone = HFClipBackbone(model_dir, processor_dir, device, dtype, batch_size=batch_size, scorer=scorer)
    if shared is not None:
        shared[key] = backbone
    return backbone


class _ClipRewardBase(RewardModel):
    preprocess: ClipPreprocess | None = None  # None: the backbone's (its processor's settings)

    def __init__(self, backbone: HFClipBackbone, name: str):
        self.backbone = backbone
        self.name = name

    def _cosine(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{self.name}: {images.shape[0]} images but {len(prompts)} prompts")
        img = self.backbone.image_embeds(images, self.preprocess)
        txt = self.backbone.text_embeds(list(prompts))
        return (img * txt).sum(-1)

    def close(self) -> None:
        self.backbone = None


class PickScore(_ClipRewardBase):
    """``scale * logit_scale.exp() * cos``; default scale 1/26 (Flow-GRPO's logged scale)."""

    def __init__(self, backbone: HFClipBackbone, *, scale: float = 1.0 / 26.0, name: str = "pickscore"):
        super().__init__(backbone, name)
        self.scale = float(scale)

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[Mapping] = ()) -> ScoreOutput:
        raw = self.backbone.logit_scale * self._cosine(images, prompts)
        return ScoreOutput.from_scores(
            (raw * self.scale).to(images.device), extras={f"{self.name}_raw": raw.to(images.device)}
        )


CLIPSCORE_CONVENTIONS = ("flow_grpo", "hessel", "cosine")
# "paper": the Precise paper's ClipScorer (Tencent-Hunyuan/Precise precise_sde/rewards/scorers/clip.py)
# feeds the float [0, 1] images through torchvision Resize(shortest edge) + CenterCrop +
# Normalize: bilinear (torchvision's default), antialiased, no clamp, no 8-bit step.
# "processor": the CLIP processor's own settings (bicubic, clamped; preprocess.py).
CLIPSCORE_RESIZE = ("paper", "processor")


class ClipScore(_ClipRewardBase):
    """CLIPScore on CLIP ViT-L/14; see the module docstring for the conventions."""

    def __init__(self, backbone: HFClipBackbone, *, convention: str = "flow_grpo", resize: str = "paper",
                 name: str = "clipscore"):
        super().__init__(backbone, name)
        if convention not in CLIPSCORE_CONVENTIONS:
            raise ValueError(f"clipscore convention must be one of {CLIPSCORE_CONVENTIONS}, got {convention!r}")
        if resize not in CLIPSCORE_RESIZE:
            raise ValueError(f"clipscore resize must be one of {CLIPSCORE_RESIZE}, got {resize!r}")
        self.convention = convention
        if resize == "paper":
            self.preprocess = dataclasses.replace(backbone.preprocess, interpolation="bilinear", clamp=False,
                                                  crop_rounding="round")

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[Mapping] = ()) -> ScoreOutput:
        cos = self._cosine(images, prompts)
        if self.convention == "flow_grpo":
            score = self.backbone.logit_scale * cos / 30.0
        elif self.convention == "hessel":
            score = 2.5 * cos.clamp_min(0.0)
        else:
            score = cos
        return ScoreOutput.from_scores(score.to(images.device), extras={f"{self.name}_cosine": cos.to(images.device)})


class AestheticMLP(nn.Module):
    """LAION improved-aesthetic-predictor head; module names match its checkpoint keys
    (``layers.{0,2,4,6,7}``). Dropout is inert at eval; there are no activations."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.layers(embeds)


def load_aesthetic_head(path: str | Path) -> nn.Module:
    """Load the LAION MLP (``layers.*`` keys) or the older linear head (``weight``/``bias``).

    ``weights_only=True``: a checkpoint that needs arbitrary unpickling is refused.
    """
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"aesthetic head {path}: expected a state dict, got {type(state).__name__}")
    if "layers.0.weight" in state:
        head: nn.Module = AestheticMLP(int(state["layers.0.weight"].shape[1]))
    elif set(state) == {"weight", "bias"}:
        head = nn.Linear(int(state["weight"].shape[1]), int(state["weight"].shape[0]))
    else:
        raise ValueError(f"aesthetic head {path}: unrecognised keys {sorted(state)[:6]}")
    head.load_state_dict(state, strict=True)
    return head.eval().requires_grad_(False)


class AestheticScore(RewardModel):
    """LAION aesthetic head on normalised CLIP ViT-L/14 image embeddings (prompt-free)."""

    def __init__(self, backbone: HFClipBackbone, head: nn.Module, *, name: str = "aesthetic"):
        self.backbone = backbone
        self.name = name
        in_features = head.layers[0].in_features if isinstance(head, AestheticMLP) else head.in_features
        if in_features != backbone.embed_dim:
            raise ValueError(
                f"aesthetic head expects {in_features}-d embeddings but the CLIP model gives {backbone.embed_dim}-d"
            )
        # The head is tiny; keep it in float32 for accuracy whatever the CLIP dtype.
        self.head = head.to(backbone.device, torch.float32)

    @torch.no_grad()
    def __call__(
        self, images: torch.Tensor, prompts: Sequence[str] = (), metadata: Sequence[Mapping] = ()
    ) -> ScoreOutput:
        embeds = self.backbone.image_embeds(images)
        scores = self.head(embeds).reshape(-1)
        return ScoreOutput.from_scores(scores.to(images.device))

    def close(self) -> None:
        self.backbone = None
