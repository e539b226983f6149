"""A tiny FLUX.2 Klein pipeline built offline from small configs.

Same architecture classes as the 4B model (``Flux2Transformer2DModel``, ``Qwen3ForCausalLM``,
a Qwen2 byte-level BPE tokenizer with a Qwen3-style chat template, ``AutoencoderKLFlux2``,
``FlowMatchEulerDiscreteScheduler`` with FLUX.2's dynamic shift), written as a real diffusers
folder and loaded back through :func:`precise_fast.models.load_pipeline` exactly like the
4B model. CPU runs, tests and benchmarks use it; nothing is downloaded.

Sizes are chosen so a rollout of B=8, 20 steps, 64x64 with 128 text tokens runs in seconds
on 2 CPU cores, while every structural feature the real model has is present: the text
encoder has 28 layers so the recipe's hidden layers (9, 18, 27) are all intermediate (as in
the 36-layer Qwen3-4B), the VAE downsamples by 8 (so 64x64 images give 8x8 latents, 4x4
packed tokens, as 512x512 gives 32x32 tokens on the real model), the transformer has both
double-stream and single-stream blocks, and the VAE's BatchNorm statistics are non-trivial
so a forgotten de-normalisation before decoding changes the images.

diffusers, transformers and tokenizers (~5 s of import) and filelock load inside the functions
that build: finding an already built folder (:func:`tiny_pipeline_path`) and importing
:mod:`precise_fast.models` need none of them.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..sde.schedules import FLUX2_SCHEDULER_CONFIG
from .attention import set_attention_backend

# Bumped whenever the configs below change, so a cached folder is never reused across versions.
TINY_BUILDER_VERSION = 1
_MARKER = "precise_fast_tiny.json"

# The recipe's hidden layers of the text encoder (shared/SAMPLERS.md): 9, 18, 27.
TINY_TEXT_LAYERS = (9, 18, 27)

TINY_TEXT_ENCODER_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 28,  # > 27: layer 27 stays an intermediate (pre-final-norm) state
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "max_position_embeddings": 512,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
}

TINY_TRANSFORMER_CONFIG = {
    "patch_size": 1,
    "in_channels": 16,  # 4 VAE latent channels x the 2x2 patch
    "num_layers": 1,
    "num_single_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 3 * 32,  # len(TINY_TEXT_LAYERS) x text hidden size
    "timestep_guidance_channels": 32,
    "mlp_ratio": 3.0,
    "axes_dims_rope": (4, 4, 4, 4),  # sums to attention_head_dim
    "rope_theta": 2000,
    "eps": 1e-6,
    "guidance_embeds": False,
}

TINY_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (8, 16, 16, 16),  # 4 levels: 8x downsampling like the real VAE
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 64,
    "mid_block_add_attention": True,
    "batch_norm_eps": 1e-4,
    "patch_size": (2, 2),
}

# Width presets: overrides of the three configs above. "klein4b" has FLUX.2 Klein 4B's real
# widths where shapes meet - 24 heads x 128 (3072 wide), 128 packed latent channels (a
# 32-channel VAE x the 2x2 patch), joint_attention_dim 7680 (three Qwen3 layers of hidden
# 2560), rope axes (32, 32, 32, 32) with theta 2000 - but one double and one single block and
# a thin, tiny-vocabulary text encoder (hidden 2560, 64-wide attention and MLP), so it loads
# and trains on a CPU and catches the shape bugs a 32-wide model cannot.
WIDTHS = {
    "tiny": {"transformer": {}, "text_encoder": {}, "vae": {}},
    "klein4b": {
        "transformer": {
            "in_channels": 128,
            "num_layers": 1,
            "num_single_layers": 1,
            "attention_head_dim": 128,
            "num_attention_heads": 24,
            "joint_attention_dim": 3 * 2560,
            "timestep_guidance_channels": 256,
            "mlp_ratio": 3.0,
            "axes_dims_rope": (32, 32, 32, 32),
            "rope_theta": 2000,
        },
        "text_encoder": {
            "hidden_size": 2560,
            "intermediate_size": 64,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 32,
        },
        "vae": {"latent_channels": 32},
    },
}


def _check_widths(widths: str) -> str:
    if widths not in WIDTHS:
        raise ValueError(f"widths={widths!r} is not one of {', '.join(WIDTHS)}")
    return widths


# A Qwen3-style chat template (same rendered text for the single-user-turn case the
# pipeline uses: `<|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n`, plus the empty
# think block when `enable_thinking=False`). Written here from the format's description.
TINY_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{ '<think>\n\n</think>\n\n' }}"
    "{%- endif -%}"
    "{%- endif -%}"
)

_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")

# Training text for the BPE merges: prompt-like English so common words become single tokens.
_CORPUS = """
a photo of a cat sitting on a red chair next to a window
a dog running on the beach at sunset, golden light, high detail
an astronaut riding a horse on the moon, digital art
a bowl of fruit with apples, oranges and bananas on a wooden table
a city street at night with neon signs and rain reflections
a painting of a mountain lake in the style of an impressionist
three blue birds on a branch, watercolor, soft colors
a close-up portrait of an old man with a white beard, studio lighting
a red sports car parked in front of a modern house
a bicycle leaning against a brick wall covered in ivy
a cup of coffee and a book on a table in a cozy cafe
two people walking through a forest in autumn with orange leaves
a futuristic robot holding a flower in a garden
a small boat on a calm sea under a starry sky
a plate of sushi on a black slate, food photography
a snowy village with wooden houses and smoke from the chimneys
an owl flying over a field at dawn, cinematic, photorealistic
a green teapot and two white cups on a tray
a castle on a hill surrounded by clouds, fantasy illustration
a child flying a kite in a park on a sunny day
user assistant system think
""" * 4


def _train_tokenizer(vocab_size: int = 600, extra_corpus: str = ""):
    """A byte-level BPE with Qwen2's pre-tokenisation, wrapped as the Qwen2 tokenizer class."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator((_CORPUS + extra_corpus).strip().splitlines(), trainer=trainer)
    state = json.loads(bpe.to_str())
    vocab = state["model"]["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["model"]["merges"]]
    tokenizer = Qwen2TokenizerFast(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(_SPECIAL_TOKENS[1:]),
        model_max_length=512,
        padding_side="right",
        chat_template=TINY_CHAT_TEMPLATE,
    )
    return tokenizer


def build_tiny_components(
    seed: int = 0,
    *,
    widths: str = "tiny",
    transformer_config: dict | None = None,
    vae_config: dict | None = None,
    extra_corpus: str = "",
) -> dict:
    """The five random-weight components (``scheduler``, ``vae``, ``text_encoder``,
    ``tokenizer``, ``transformer``), deterministic in ``seed``.

    ``widths`` picks a preset of :data:`WIDTHS`; explicit ``transformer_config`` /
    ``vae_config`` replace the preset's (the shapes world, :mod:`precise_fast.toy`, passes its
    own sizes and prompt text for the tokenizer's merges).
    """
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = _train_tokenizer(extra_corpus=extra_corpus)
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        sizes = WIDTHS[_check_widths(widths)]
        text_config = Qwen3Config(vocab_size=len(tokenizer), **{**TINY_TEXT_ENCODER_CONFIG, **sizes["text_encoder"]})
        text_config.pad_token_id = tokenizer.pad_token_id
        text_config.eos_token_id = tokenizer.eos_token_id
        text_encoder = Qwen3ForCausalLM(text_config).eval()
        transformer = Flux2Transformer2DModel(**(transformer_config or {**TINY_TRANSFORMER_CONFIG, **sizes["transformer"]})).eval()
        vae = AutoencoderKLFlux2(**(vae_config or {**TINY_VAE_CONFIG, **sizes["vae"]})).eval()
        # Non-trivial latent statistics (the real VAE's are far from 0 / 1): the pipeline
        # de-normalises packed latents with them before decoding.
        channels = vae.bn.num_features
        vae.bn.running_mean.copy_(0.2 * torch.randn(channels))
        vae.bn.running_var.copy_(torch.rand(channels) + 0.5)
    finally:
        torch.random.set_rng_state(gen_state)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(FLUX2_SCHEDULER_CONFIG)
    return dict(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer)


def random_transformer(config: dict, *, dtype: torch.dtype, device, seed: int = 0,
                       fill_zeros: bool = False):
    """A ``Flux2Transformer2DModel(**config)`` with random weights, initialised directly on
    ``device`` in ``dtype`` (FLUX.2 Klein 4B at its real size: seconds on a GPU, and no float32
    copy of its 3.9e9 weights on the way), in eval mode and frozen. ``fill_zeros`` gives the
    matrices diffusers initialises to zero small random values (a benchmark never times zeros)."""
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            transformer = Flux2Transformer2DModel(**config)
    finally:
        torch.set_default_dtype(default)
    transformer = transformer.to(dtype).eval().requires_grad_(False)
    if fill_zeros and torch.device(device).type != "meta":
        with torch.no_grad():
            for p in transformer.parameters():
                if p.dim() > 1 and not p.any():
                    p.normal_(0.0, 0.02)
    return transformer


def random_pipeline(transformer_config: dict, *, widths: str, dtype: torch.dtype, device, seed: int = 0,
                    attention_backend: str = "auto", fill_zeros: bool = False):
    """A ``Flux2KleinPipeline`` built in memory: :func:`random_transformer` of
    ``transformer_config`` inside the tiny builder's text encoder and VAE at ``widths`` (the real
    model's widths for ``"klein4b"``), all frozen as ``load_pipeline`` leaves them. For runs that
    need the real transformer's size but no trained weights (the GPU benchmarks, the real-size
    trainer check), without writing and reading back a multi-GB folder."""
    from diffusers import Flux2KleinPipeline

    parts = build_tiny_components(seed, widths=widths, transformer_config={**transformer_config, "num_layers": 0,
                                                                           "num_single_layers": 0})
    parts["transformer"] = random_transformer(transformer_config, dtype=dtype, device=device, seed=seed,
                                              fill_zeros=fill_zeros)
    pipe = Flux2KleinPipeline(is_distilled=False, **parts).to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.transformer, pipe.text_encoder, pipe.vae):
        module.eval().requires_grad_(False)
    set_attention_backend(pipe.transformer, attention_backend)
    return pipe


def build_tiny_pipeline(
    out_dir: str | os.PathLike,
    seed: int = 0,
    *,
    overwrite: bool = False,
    widths: str = "tiny",
    components: dict | None = None,
    marker: dict | None = None,
) -> Path:
    """Write a tiny FLUX.2 Klein pipeline (diffusers format) to ``out_dir`` and return its path.

    Deterministic in ``seed``; ``widths`` picks a preset of :data:`WIDTHS` (``"klein4b"``:
    the real model's widths, ~2.3 GB of float32 weights). The folder is complete (``model_index.json`` and the five
    component folders) and loads with ``load_pipeline(path)`` or stock
    ``Flux2KleinPipeline.from_pretrained(path)``. Refuses a non-empty ``out_dir`` unless
    ``overwrite``. The write goes to a temporary sibling first, so an interrupted build never
    leaves a half-written folder behind under ``out_dir``. ``components`` (as
    :func:`build_tiny_components` returns, possibly trained) are written instead of fresh
    ones; ``marker`` replaces the builder's version record.
    """
    from diffusers import Flux2KleinPipeline

    _check_widths(widths)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True to replace it)")
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pipe = Flux2KleinPipeline(is_distilled=False, **(components or build_tiny_components(int(seed), widths=widths)))
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pipe.save_pretrained(staging, safe_serialization=True)
        info = marker if marker is not None else {"version": TINY_BUILDER_VERSION, "seed": int(seed), "widths": widths}
        (staging / _MARKER).write_text(json.dumps(info))
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def default_cache_dir() -> Path:
    """``$PRECISE_FAST_CACHE`` or ``~/.cache/precise_fast``."""
    root = os.environ.get("PRECISE_FAST_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "precise_fast"


def _folder_name(seed: int, widths: str) -> str:
    tag = "" if widths == "tiny" else f"-{widths}"
    return f"tiny-flux2-klein{tag}-v{TINY_BUILDER_VERSION}-seed{int(seed)}"


def _is_built(path: Path, seed: int, widths: str) -> bool:
    marker = path / _MARKER
    if not marker.is_file():
        return False
    info = json.loads(marker.read_text())
    return (info.get("version"), info.get("seed"), info.get("widths", "tiny")) == (TINY_BUILDER_VERSION, int(seed), widths)


def _build_lock(path: Path):
    """A lock beside ``path``: processes sharing the cache (the ranks of a node, the nodes of a
    job on one filesystem) build it once, the others wait, then read. It saves the duplicate
    work; what keeps a reader from a half-written folder is the rename that publishes a build
    (filelock falls back to a lock file where the filesystem has no ``flock``)."""
    from filelock import FileLock

    return FileLock(str(path.parent / f".{path.name}.lock"))


def tiny_pipeline_path(seed: int = 0, cache_dir: str | os.PathLike | None = None, widths: str = "tiny") -> Path:
    """The tiny pipeline's folder in the cache, built on first use (tests and benchmarks share it).

    Safe for any number of processes at once on one or several machines sharing the cache:
    one builds (under a file lock) into a temporary folder that a rename publishes whole;
    a build is deterministic in (seed, widths), so nodes with separate caches load equal
    models. A folder of another build (no or a foreign marker) is renamed aside, never
    deleted under a reader.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / _folder_name(seed, _check_widths(widths))
    if _is_built(path, seed, widths):
        return path
    root.mkdir(parents=True, exist_ok=True)
    with _build_lock(path):
        if _is_built(path, seed, widths):  # another process built it while this one waited
            return path
        if path.exists():
            stale = Path(tempfile.mkdtemp(prefix=f".{path.name}.stale.", dir=root))
            os.rename(path, stale / path.name)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            return build_tiny_pipeline(path, seed=seed, widths=widths)
        except OSError:  # FileExistsError too: a node whose lock this one did not see (NFS with local locks) won
            if _is_built(path, seed, widths):
                return path
            raise


_PROCESS_TINY: dict[tuple[int, str], Path] = {}


def process_tiny_pipeline_path(seed: int = 0, widths: str = "tiny") -> Path:
    """A tiny pipeline built once per process into a temporary folder removed at exit.

    Test suites share it through their session fixtures (one build per pytest run, no
    state left in the user's cache).
    """
    key = (int(seed), _check_widths(widths))
    if key not in _PROCESS_TINY:
        root = Path(tempfile.mkdtemp(prefix="precise_fast_tiny_"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _PROCESS_TINY[key] = build_tiny_pipeline(root / _folder_name(*key), seed=key[0], widths=key[1])
    return _PROCESS_TINY[key]
