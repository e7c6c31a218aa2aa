"""Where an SVD model's files are: the repository layout, the Hugging Face cache, local folders.

One answer for the loader (svd.py's preflight and from_pretrained calls) and for doctor, which
must not import torch: so this module imports neither torch nor diffusers, and huggingface_hub
only inside the functions that read the cache.

    locate(model)          'local' (a directory, or anything that reads as a path) or 'hub'
    hub_cache_dir(env)     the cache from_pretrained uses, read from the environment now
    find(...)              one file of the model on disk, or None
    missing_files(...)     the files of a complete SVD repository that are not on disk
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

Location = Literal["local", "hub"]

CONFIG_FILES = {
    "unet": "unet/config.json",
    "vae": "vae/config.json",
    "image_encoder": "image_encoder/config.json",
    "feature_extractor": "feature_extractor/preprocessor_config.json",
    "scheduler": "scheduler/scheduler_config.json",
}
_DIFFUSERS_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin",
)
_TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
WEIGHT_FILES = {"unet": _DIFFUSERS_WEIGHTS, "vae": _DIFFUSERS_WEIGHTS, "image_encoder": _TRANSFORMERS_WEIGHTS}
"""Any one of these is the component's weights, or its fp16 variant (model.fp16.safetensors)."""
COMPONENTS = tuple(CONFIG_FILES)
FP16_VARIANT = "fp16"


def stage_components(is_first: bool, is_last: bool) -> tuple[str, ...]:
    """The components one stage loads: every stage the UNet and scheduler; the first also the CLIP
    image encoder, its feature extractor and the VAE (to encode the image); the last the VAE (to decode)."""
    names = ["unet", "scheduler"]
    if is_first:
        names += ["image_encoder", "feature_extractor"]
    if is_first or is_last:
        names.append("vae")
    return tuple(names)


def variant_name(filename: str, variant: str = FP16_VARIANT) -> str:
    """'model.safetensors' -> 'model.fp16.safetensors' (diffusers' and transformers' convention)."""
    stem, _, rest = filename.partition(".")
    return f"{stem}.{variant}.{rest}"


def predownload_command(model: str, hub_cli: str = "hf", revision: str | None = None) -> str:
    """Fetches the diffusers-format folders (fp32 and fp16) and skips the single-file checkpoints (svd*.safetensors)."""
    pinned = f" --revision {revision}" if revision else ""
    return f'{hub_cli} download {model}{pinned} --exclude "svd*"'


# -- local or hub ----------------------------------------------------------------------------------


def locate(model: str) -> Location:
    """'local' for an existing directory and for anything that reads as a path ('./missing',
    '/data/svd', '~/m', 'a/b/c', a name the Hub would reject); else 'hub' (an id like org/name).

    A path that does not exist is still a path: the answer is "no such directory", never a
    download attempt of a repository that cannot exist.
    """
    if os.path.isdir(os.path.expanduser(model)):
        return "local"
    if os.path.isabs(model) or model.startswith((".", "~")) or model.count("/") > 1:
        return "local"
    # huggingface_hub is heavy (about 0.4 s): imported only where the Hub is asked.
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError:
        return "local"
    return "hub"


def hub_cache_dir(env: Mapping[str, str] | None = None) -> str:
    """The Hugging Face hub cache, resolved as huggingface_hub does, from the environment *now*.

    huggingface_hub reads HF_HOME / HF_HUB_CACHE once, at import; reading them again here (and
    passing the result to from_pretrained) keeps the launcher's check, the workers' loads and
    doctor on the same folder even when the variables were set after that import.
    """
    env = os.environ if env is None else env
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return os.path.expandvars(os.path.expanduser(cache))


def hub_offline(env: Mapping[str, str] | None = None) -> bool:
    """HF_HUB_OFFLINE as set now (see hub_cache_dir for why not huggingface_hub's import-time constant)."""
    env = os.environ if env is None else env
    return (env.get("HF_HUB_OFFLINE") or "").strip().upper() in ("1", "ON", "YES", "TRUE")


def repo_cache_dir(model: str, env: Mapping[str, str] | None = None) -> Path:
    """The cache folder of one hub model (models--org--name), whether or not it exists."""
    from huggingface_hub.file_download import repo_folder_name  # heavy: about 0.4 s, only where the Hub is asked

    return Path(hub_cache_dir(env)) / repo_folder_name(repo_id=model, repo_type="model")


# -- files on disk ---------------------------------------------------------------------------------


def find(
    model: str, where: Location, relpath: str, *, revision: str | None = None, env: Mapping[str, str] | None = None
) -> str | None:
    """Path of one file of the model if it is on disk (local directory or the cache's snapshot of
    `revision`, main by default), else None."""
    if where == "local":
        path = Path(os.path.expanduser(model)) / relpath
        return str(path) if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache  # heavy: about 0.4 s, only where the Hub is asked

    found = try_to_load_from_cache(model, relpath, cache_dir=hub_cache_dir(env), revision=revision)
    return found if isinstance(found, str) else None


def missing_files(
    model: str, where: Location, *, revision: str | None = None, env: Mapping[str, str] | None = None
) -> list[str]:
    """Files of a complete SVD repository that are not on disk: configs, and for each component
    with weights its first weights name when neither any weights file nor its fp16 variant is there."""

    def has(rel: str) -> bool:
        return find(model, where, rel, revision=revision, env=env) is not None

    missing = [rel for rel in CONFIG_FILES.values() if not has(rel)]
    for name, files in WEIGHT_FILES.items():
        if not any(has(f"{name}/{f}") or has(f"{name}/{variant_name(f)}") for f in files):
            missing.append(f"{name}/{files[0]}")
    return missing


def missing_components(missing: list[str]) -> tuple[str, ...]:
    """The components (in COMPONENTS order) that missing_files found incomplete."""
    incomplete = {rel.split("/", 1)[0] for rel in missing}
    return tuple(name for name in COMPONENTS if name in incomplete)


def model_root(
    model: str, where: Location, *, revision: str | None = None, env: Mapping[str, str] | None = None
) -> Path | None:
    """The folder the model's files are read from: the directory itself, or the cache snapshot
    (found through any one of its config files); None when there is none."""
    if where == "local":
        root = Path(os.path.expanduser(model))
        return root if root.is_dir() else None
    for rel in CONFIG_FILES.values():
        found = find(model, where, rel, revision=revision, env=env)
        if found is not None:
            return Path(found).parents[len(Path(rel).parts) - 1]
    return None


def weight_params(
    model: str, where: Location, *, revision: str | None = None, env: Mapping[str, str] | None = None
) -> dict[str, int]:
    """Parameter count of each component whose safetensors weights are on disk, read from the
    files' headers (exact, no tensors loaded); components without such files are left out."""
    counts: dict[str, int] = {}
    for name, files in WEIGHT_FILES.items():
        for candidate in files:
            if not candidate.endswith((".safetensors", ".safetensors.index.json")):
                continue
            found = find(model, where, f"{name}/{candidate}", revision=revision, env=env)
            found = found or find(model, where, f"{name}/{variant_name(candidate)}", revision=revision, env=env)
            if found is None:
                continue
            shards = [Path(found)]
            if found.endswith(".index.json"):
                weight_map = json.loads(Path(found).read_text()).get("weight_map", {})
                shards = [Path(found).parent / shard for shard in sorted(set(weight_map.values()))]
            counts[name] = sum(_safetensors_params(shard) for shard in shards)
            break
    return counts


def _safetensors_params(path: Path) -> int:
    """Elements of every tensor in a safetensors file: its header is an 8-byte length and JSON."""

    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
    return sum(math.prod(entry["shape"]) for key, entry in header.items() if key != "__metadata__")
